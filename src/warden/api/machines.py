"""The core's routes: the daemon, its machines, the fleet file and the events."""

import asyncio

from aiohttp import web

from warden.api.common import Ctx, body, peer_user
from warden.errors import NotFound, SpecError

ACTIONS = ("create", "start", "stop", "kill", "reset", "destroy", "pause", "resume")


async def status(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.daemon.status())


async def machines(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.daemon.infos())


async def machine(c: Ctx, request: web.Request) -> web.Response:
    return web.json_response(c.daemon.sup(request.match_info["name"]).info())


async def action(c: Ctx, request: web.Request) -> web.Response:
    name, what = request.match_info["name"], request.match_info["action"]
    if what not in ACTIONS:
        raise NotFound(f"unknown action {what!r}; one of {', '.join(ACTIONS)}")
    b = await body(request)
    wait = bool(b.get("wait", True))
    timeout = float(b.get("timeout", 30.0))
    d = c.daemon
    if what == "start":
        if wait:
            return web.json_response(await d.start_and_wait(name, timeout=max(timeout, 120)))
        d.start_machine(name)
    elif what == "stop":
        await d.stop_machine(name, timeout=timeout, wait=wait)
    elif what == "kill":
        await d.kill_machine(name, wait=wait)
    elif what == "create":
        d.create_machine(name)
    elif what == "reset":
        d.reset_machine(name)
    elif what == "destroy":
        d.destroy_machine(name)
    elif what == "pause":
        d.pause_machine(name)
    elif what == "resume":
        d.resume_machine(name)
    return web.json_response(d.sup(name).info())


async def mconsole(c: Ctx, request: web.Request) -> web.Response:
    b = await body(request)
    command = b.get("command")
    if not isinstance(command, str) or not command.strip():
        raise SpecError('expected {"command": "CMD ..."}')
    reply = await c.daemon.mconsole(
        request.match_info["name"],
        command.strip(),
        user=peer_user(request),
        timeout=float(b.get("timeout", 10)),
    )
    return web.json_response({"reply": reply})


async def get_fleet(c: Ctx, request: web.Request) -> web.Response:
    saved = c.daemon.ctx.store.load_fleet()
    return web.json_response({"source": saved[0], "text": saved[1]} if saved else {})


async def post_fleet(c: Ctx, request: web.Request) -> web.Response:
    b = await body(request)
    text, source = b.get("text"), b.get("source", "<api>")
    if not isinstance(text, str):
        raise SpecError('expected {"text": "<fleet file>", "source": "path"}')
    return web.json_response(await c.daemon.apply(text, str(source), bool(b.get("prune"))))


async def events(c: Ctx, request: web.Request) -> web.Response:
    machine_ = request.query.get("machine")
    since = int(request.query.get("since", "0"))
    store = c.daemon.ctx.store
    # What the daemon did before this request is in the answer: wait for the writer thread off
    # the loop (under heavy disk I/O a commit can take seconds; the read's own wait is short).
    await asyncio.to_thread(store.flush)
    return web.json_response(store.events(machine_, since))


async def event_stream(c: Ctx, request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    bus = c.daemon.ctx.bus
    q = bus.subscribe()
    try:
        while not ws.closed:
            ev = await q.get()
            await ws.send_json(ev)
    finally:
        bus.unsubscribe(q)
    return ws
