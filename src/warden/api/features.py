"""The features' routes: each parses, calls one method of a feature, serialises."""

import asyncio
from pathlib import Path

from aiohttp import web

from warden.api.common import Ctx, body, client_gone, float_arg, int_arg, peer_user
from warden.errors import SpecError, WardenError
from warden.units import parse_size


# ---- console
async def logs_flush(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response({"flushed": await c.features.console.flush_logs(30.0)})


async def sessions(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.features.console.sessions())


# ---- jail
async def jail_audit(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.jail.audit(request.match_info["name"]))


# ---- snapshots
async def snapshot_list(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.snapshots.listing(request.match_info["name"]))


async def snapshot_take(c: Ctx, request: web.Request) -> web.Response:
    snap = (await body(request)).get("snapshot")
    if snap is not None and not isinstance(snap, str):
        raise SpecError('expected {"snapshot": "NAME"} or no body')
    out = await c.features.snapshots.take(request.match_info["name"], snap)
    return web.json_response(out)


async def snapshot_restore(c: Ctx, request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(await c.features.snapshots.restore(m["name"], m["snap"]))


async def snapshot_delete(c: Ctx, request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(await c.features.snapshots.delete(m["name"], m["snap"]))


async def disk_diff(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.snapshots.diff(request.match_info["name"]))


# ---- memory
async def memory_status(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.features.memory.snapshot())


async def memory_set(c: Ctx, request: web.Request) -> web.Response:
    try:
        b = await request.json()
    except ValueError:
        raise SpecError("request body is not JSON") from None
    raw = b.get("size") if isinstance(b, dict) else None
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise SpecError('expected {"size": "256M"} or {"size": "auto"}')
    size: int | None
    if raw == "auto":
        size = None
    else:
        try:
            size = parse_size(raw)
        except ValueError as e:
            raise SpecError(f"size {raw!r}: {e}, or 'auto' (the balancer decides)") from None
    out = await c.features.memory.set_size(request.match_info["name"], size)
    return web.json_response(out)


# ---- honeypot
async def honeypot_all(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.features.honeypot.status())


async def honeypot_one(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.features.honeypot.status(request.match_info["name"])[0])


async def honeypot_score(c: Ctx, request: web.Request) -> web.Response:
    b = await body(request)
    return web.json_response(await c.features.honeypot.score(request.match_info["name"], b))


# ---- net
async def net_ls(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.net.ls())


async def net_cut(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.net.cut(request.match_info["name"], True))


async def net_restore(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(await c.features.net.cut(request.match_info["name"], False))


async def net_capture(c: Ctx, request: web.Request) -> web.StreamResponse:
    """A pcap stream (application/vnd.tcpdump.pcap) of every frame of the guest's tap, from
    the host side; it ends after `count` packets, `duration` seconds, or when the client goes
    away. The response starts once tcpdump is listening."""
    nic = int_arg(request, "nic", 0) or 0
    count = int_arg(request, "count", None)
    duration = float_arg(request, "duration")
    stream = await c.features.net.capture(request.match_info["name"], nic, count or None)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/vnd.tcpdump.pcap",
            "X-Warden-Tap": stream.tap,
            "X-Warden-Capture-Pid": str(stream.pid),
        }
    )
    try:
        await resp.prepare(request)
        async for data in stream.chunks(duration, lambda: client_gone(request)):
            await resp.write(data)
        if not client_gone(request):
            await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        stream.stop()
        raise
    finally:
        await stream.close()
    return resp


# ---- forensics
def _flag(value: str | None) -> bool:
    return value not in (None, "", "0", "false", "no")


async def timeline(c: Ctx, request: web.Request) -> web.Response:
    q = request.query
    boot = None
    if q.get("boot"):
        try:
            boot = int(q["boot"])
        except ValueError:
            raise WardenError(f"boot={q['boot']!r}: expected a boot number") from None
    out = await c.features.forensics.timeline(
        request.match_info["name"], boot, q.get("since"), _flag(q.get("sync"))
    )
    return web.json_response(out)


async def evidence(c: Ctx, request: web.Request) -> web.Response:
    b = await request.json() if request.can_read_body else {}
    out = b.get("out")
    if out is not None and not Path(out).is_absolute():
        raise WardenError(f"out={out!r}: give an absolute path")
    result = await c.features.forensics.evidence(
        request.match_info["name"], Path(out) if out else None, bool(b.get("sync"))
    )
    return web.json_response(result)


async def recycle(c: Ctx, request: web.Request) -> web.Response:
    b = await request.json() if request.can_read_body else {}
    result = await c.features.forensics.recycle(
        request.match_info["name"],
        sync=bool(b.get("sync", True)),
        wait_evidence=bool(b.get("wait_evidence", False)),
    )
    return web.json_response(result)


# ---- web console
async def web_link(c: Ctx, request: web.Request) -> web.Response:
    """A one-time login link for the web console (`warden web link`)."""
    b = await body(request)
    owner, ttl = b.get("owner"), b.get("ttl", 0)
    if owner is not None and not isinstance(owner, str):
        raise SpecError('expected {"owner": NAME or null, "admin": bool, "ttl": seconds}')
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise SpecError(f"ttl {ttl!r}: expected a number of seconds")
    out = c.features.web.login_link(owner, bool(b.get("admin")), peer_user(request), float(ttl))
    return web.json_response(out)


async def pools(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.features.forensics.pools.status())
