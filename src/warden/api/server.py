"""The daemon's API: HTTP/JSON over the UNIX socket WARDEN_HOME/run/warden.sock (mode 0600).

Routes (all under /v1; errors are {"error": message} with 400 bad input, 404 unknown name,
409 wrong state, 500 a bug):
    GET  /status                      daemon facts
    GET  /machines                    every machine's info (warden ls)
    GET  /machines/{name}
    POST /machines/{name}/{action}    create start stop kill reset destroy pause resume
                                      (JSON body: {"wait": bool, "timeout": seconds})
    POST /machines/{name}/mconsole    {"command": "..."} -> {"reply": "..."}
    GET  /machines/{name}/lines/{line}/attach?mode=rw|spy&force=1&scrollback=N   websocket
    GET  /fleet                       the applied fleet file
    POST /fleet                       {"text": ..., "source": ..., "prune": bool}
    GET  /events?machine=&since=      stored events
    GET  /events/stream               websocket of live events

Console websocket frames: binary both ways are terminal bytes; text frames are JSON:
server -> client {"notice": "..."} or {"closed": "reason"}; client -> server
{"resize": [cols, rows]} or {"detach": true}.
"""

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
from typing import Any

from aiohttp import WSMsgType, web

from warden.daemon.core import Daemon
from warden.daemon.lines import CLIENT_QUEUE, Client
from warden.errors import Conflict, NotFound, SpecError, WardenError
from warden.tasks import spawn

log = logging.getLogger("warden.api")

ACTIONS = ("create", "start", "stop", "kill", "reset", "destroy", "pause", "resume")


def _status_for(e: WardenError) -> int:
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, Conflict):
        return 409
    return 400


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except WardenError as e:
        return web.json_response({"error": str(e)}, status=_status_for(e))
    except TimeoutError:
        return web.json_response({"error": "timed out waiting for the guest"}, status=504)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("API %s %s", request.method, request.path)
        return web.json_response({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)


def _peer_user(request: web.Request) -> str:
    """The local user on the other end of the UNIX socket (SO_PEERCRED)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return "unknown"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "unknown"


class Api:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.app = web.Application(middlewares=[errors])
        r = self.app.router
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/machines", self.machines)
        r.add_get("/v1/machines/{name}", self.machine)
        r.add_post("/v1/machines/{name}/mconsole", self.mconsole)
        r.add_get("/v1/machines/{name}/lines/{line}/attach", self.attach)
        r.add_get("/v1/fleet", self.get_fleet)
        r.add_post("/v1/fleet", self.post_fleet)
        r.add_get("/v1/events", self.events)
        r.add_get("/v1/events/stream", self.event_stream)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        for method, route, handler in self.daemon.routes:  # added by features' install()
            self.app.router.add_route(method, "/v1/" + route.lstrip("/"), handler)
        # Last: this pattern would shadow features' POST machines/{name}/WORD routes.
        self.app.router.add_post("/v1/machines/{name}/{action}", self.action)
        path = self.daemon.layout.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self.runner.setup()
        # aiohttp's default backlog (128) overflowed with 200 clients at once (every console
        # of a 200-guest fleet asked together): connects then fail with ENOTCONN.
        site = web.UnixSite(self.runner, str(path), backlog=1024)
        old = os.umask(0o077)
        try:
            await site.start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.daemon.layout.socket.unlink()

    # ---- handlers ---------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.daemon.status())

    async def machines(self, request: web.Request) -> web.Response:
        return web.json_response([s.info() for s in self.daemon.sups.values()])

    async def machine(self, request: web.Request) -> web.Response:
        return web.json_response(self.daemon.sup(request.match_info["name"]).info())

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise SpecError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise SpecError("request body must be a JSON object")
        return body

    async def action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in ACTIONS:
            raise NotFound(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        body = await self._body(request)
        wait = bool(body.get("wait", True))
        timeout = float(body.get("timeout", 30.0))
        d = self.daemon
        if action == "start":
            if wait:
                return web.json_response(await d.start_and_wait(name, timeout=max(timeout, 120)))
            d.start_machine(name)
        elif action == "stop":
            await d.stop_machine(name, timeout=timeout, wait=wait)
        elif action == "kill":
            await d.kill_machine(name, wait=wait)
        elif action == "create":
            d.create_machine(name)
        elif action == "reset":
            d.reset_machine(name)
        elif action == "destroy":
            d.destroy_machine(name)
        elif action == "pause":
            d.pause_machine(name)
        elif action == "resume":
            d.resume_machine(name)
        return web.json_response(d.sup(name).info())

    async def mconsole(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise SpecError('expected {"command": "CMD ..."}')
        sup = self.daemon.sup(request.match_info["name"])
        reply = await sup.request(command.strip(), timeout=float(body.get("timeout", 10)))
        self.daemon.c.event(sup.name, "mconsole", command=command.strip(), user=_peer_user(request))
        return web.json_response({"reply": reply})

    async def get_fleet(self, request: web.Request) -> web.Response:
        saved = self.daemon.c.store.load_fleet()
        return web.json_response({"source": saved[0], "text": saved[1]} if saved else {})

    async def post_fleet(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        text, source = body.get("text"), body.get("source", "<api>")
        if not isinstance(text, str):
            raise SpecError('expected {"text": "<fleet file>", "source": "path"}')
        return web.json_response(self.daemon.apply(text, str(source), bool(body.get("prune"))))

    async def events(self, request: web.Request) -> web.Response:
        machine = request.query.get("machine")
        since = int(request.query.get("since", "0"))
        return web.json_response(self.daemon.c.store.events(machine, since))

    async def event_stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        q = self.daemon.c.bus.subscribe()
        try:
            while not ws.closed:
                ev = await q.get()
                await ws.send_json(ev)
        finally:
            self.daemon.c.bus.unsubscribe(q)
        return ws

    async def attach(self, request: web.Request) -> web.WebSocketResponse:
        sup = self.daemon.sup(request.match_info["name"])
        line_name = request.match_info["line"]
        line = sup.lines.get(line_name)
        if line is None or line_name not in sup.spec.lines:
            raise NotFound(
                f"{sup.name} has no line {line_name!r} (lines: {', '.join(sup.spec.lines)})"
            )
        mode = request.query.get("mode", "rw")
        force = request.query.get("force") == "1"
        scrollback = int(request.query.get("scrollback", "0"))
        user = _peer_user(request)
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=8 << 20)
        await ws.prepare(request)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        queued = [0]
        closed = asyncio.Event()

        def send(data: bytes) -> None:
            queued[0] += len(data)
            if queued[0] > CLIENT_QUEUE:
                raise RuntimeError("client too slow")
            queue.put_nowait(("data", data))

        def notify(text: str) -> None:
            queue.put_nowait(("notice", text))

        def close(reason: str) -> None:
            queue.put_nowait(("closed", reason))
            closed.set()

        client = Client(user=user, source="local", send=send, notify=notify, close=close)
        try:
            line.attach(client, want_write=(mode == "rw"), force=force)
        except Conflict as e:
            await ws.send_json({"closed": str(e)})
            await ws.close()
            return ws

        async def pump() -> None:
            while True:
                kind, payload = await queue.get()
                if kind == "data":
                    queued[0] -= len(payload)
                    await ws.send_bytes(payload)
                elif kind == "notice":
                    await ws.send_json({"notice": payload})
                else:
                    await ws.send_json({"closed": payload})
                    await ws.close()
                    return

        if scrollback:
            queue.put_nowait(("data", line.recent(scrollback)))
        writer = spawn(pump(), f"attach-out:{sup.name}:{line_name}")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    line.write(client, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    ctl = json.loads(msg.data)
                    if ctl.get("detach"):
                        break
                    if "resize" in ctl:
                        cols, rows = ctl["resize"]
                        line.resize(client, int(cols), int(rows))
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            line.detach(client)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if not ws.closed:
                await ws.close()
        return ws
