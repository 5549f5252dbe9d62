"""Disk operations on machines by name, through the daemon (which owns their mconsole).

Routes (under /v1):
    GET    machines/{name}/snapshots                 list
    POST   machines/{name}/snapshots                 {"snapshot": NAME?} take (stop, copy, go)
    POST   machines/{name}/snapshots/{snap}/restore  the machine must be stopped
    DELETE machines/{name}/snapshots/{snap}
    GET    machines/{name}/diff                      files created/modified/deleted vs the base

A running guest holds its COW file locked, so `diff` of a running guest reads a snapshot taken
for the purpose (and removed afterwards): the answer is consistent and the guest pauses only
for the copy of what it wrote.
"""

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from warden.daemon import machine as m
from warden.disk import diff as diffmod
from warden.disk import snapshot
from warden.disk.backing import Recorded
from warden.disk.errors import DiskError
from warden.errors import Conflict

if TYPE_CHECKING:
    from warden.daemon.core import Daemon
    from warden.daemon.supervisor import Supervisor


class _LoopClient:
    """snapshot.take() wants a blocking mconsole client; it runs in a worker thread, and this
    hands each request to the daemon's own client on the event loop."""

    def __init__(self, sup: "Supervisor", loop: asyncio.AbstractEventLoop):
        self.sup = sup
        self.loop = loop

    def request(self, command: str, timeout: float | None = None) -> str:
        fut = asyncio.run_coroutine_threadsafe(self.sup.request(command, timeout), self.loop)
        return fut.result()


class _Stopped:
    """A stopped guest needs no pause: its COW file is copied as it is."""

    def request(self, command: str, timeout: float | None = None) -> str:
        return ""


def _client(sup: "Supervisor") -> "snapshot.CommandClient":
    if sup.machine.state in (m.State.RUNNING, m.State.PAUSED):
        return _LoopClient(sup, asyncio.get_running_loop())
    if sup.machine.state in m.LIVE:
        raise Conflict(f"{sup.name} is {sup.machine.state}; wait until it is running or stopped")
    return _Stopped()


def recorded(sup: "Supervisor") -> Recorded:
    """The base warden recorded for the machine: every disk operation uses it, never the path
    the guest-writable COW header names."""
    if not sup.base:
        raise DiskError(
            f"{sup.name}: no base image is recorded for its disk; `warden reset {sup.name}` "
            "makes a new disk over the image's current build"
        )
    return Recorded(sup.name, Path(sup.base))


def install(daemon: "Daemon") -> None:
    async def take(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        body = await request.json() if request.can_read_body else {}
        name = body.get("snapshot") or time.strftime("%Y%m%d-%H%M%S")
        client = _client(sup)
        loop = asyncio.get_running_loop()
        rec = recorded(sup)
        s = await loop.run_in_executor(
            None, lambda: snapshot.take(sup.files.cow, client, name, recorded=rec)
        )
        daemon.c.event(
            sup.name, "snapshot", snapshot=s.name, paused_ms=round(s.paused_seconds * 1e3)
        )
        return web.json_response(s.as_json() | {"path": str(s.cow)})

    async def listing(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        snaps = snapshot.list_snapshots(sup.files.cow)
        return web.json_response([s.as_json() | {"path": str(s.cow)} for s in snaps])

    async def restore(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        if sup.machine.state in m.LIVE:
            raise Conflict(f"{sup.name} is {sup.machine.state}; stop it before a restore")
        snap = request.match_info["snap"]
        loop = asyncio.get_running_loop()
        rec = recorded(sup)
        s = await loop.run_in_executor(
            None, lambda: snapshot.restore(sup.files.cow, snap, recorded=rec)
        )
        daemon.c.event(sup.name, "snapshot-restored", snapshot=s.name)
        return web.json_response(s.as_json())

    async def delete(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        snapshot.delete(sup.files.cow, request.match_info["snap"])
        return web.json_response({"deleted": request.match_info["snap"]})

    async def diff(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        loop = asyncio.get_running_loop()
        rec = recorded(sup)
        if sup.machine.state in m.LIVE:
            client = _client(sup)
            temp = f"diff-{time.time_ns()}"
            s = await loop.run_in_executor(
                None, lambda: snapshot.take(sup.files.cow, client, temp, recorded=rec)
            )
            try:
                report = await loop.run_in_executor(None, lambda: diffmod.diff(s.cow, recorded=rec))
            finally:
                snapshot.delete(sup.files.cow, temp)
        else:
            report = await loop.run_in_executor(
                None, lambda: diffmod.diff(sup.files.cow, recorded=rec)
            )
        out: dict[str, Any] = report.as_json()
        return web.json_response(out)

    daemon.add_route("GET", "machines/{name}/snapshots", listing)
    daemon.add_route("POST", "machines/{name}/snapshots", take)
    daemon.add_route("POST", "machines/{name}/snapshots/{snap}/restore", restore)
    daemon.add_route("DELETE", "machines/{name}/snapshots/{snap}", delete)
    daemon.add_route("GET", "machines/{name}/diff", diff)
