"""The daemon's API: HTTP/JSON over the UNIX socket WARDEN_HOME/run/warden.sock (mode 0600).

Every route of the daemon is in ROUTES below (the features add none of their own): each
handler parses the request, calls one method of the core or of a feature, and serialises the
answer. Errors are {"error": message} with 400 bad input, 404 unknown name, 409 wrong state,
504 a guest that did not answer, 500 a bug.

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
    -- console:   POST /logs/flush, GET /sessions
    -- jail:      GET  /machines/{name}/jail                      (warden jail audit)
    -- snapshots: GET|POST /machines/{name}/snapshots, POST .../snapshots/{snap}/restore,
                  DELETE .../snapshots/{snap}, GET /machines/{name}/diff
    -- memory:    GET /memory (warden top), POST /memory/{name} {"size": "256M" | "auto"}
    -- honeypot:  GET /honeypot, GET /honeypot/{name}, POST /honeypot/{name}/score
    -- net:       GET /net, POST /net/{name}/cut, POST /net/{name}/restore,
                  GET /net/{name}/capture?nic=N&count=N&duration=S   (a pcap stream)
    -- forensics: GET /machines/{name}/timeline?boot=B&since=SNAP&sync=1,
                  POST /machines/{name}/evidence {"out": PATH?, "sync": bool},
                  POST /machines/{name}/recycle {"sync": bool, "wait_evidence": bool},
                  GET /pools (each pool's guests: slot and the address that has it)
    -- web:       POST /web/link {"owner": NAME | null, "admin": bool, "ttl": seconds}
                  -> {"url", "expires", "user", "fingerprint"}   (`warden web link`)

Console websocket frames: binary both ways are terminal bytes; text frames are JSON:
server -> client {"notice": "..."} or {"closed": "reason"}; client -> server
{"resize": [cols, rows]} or {"detach": true}.
"""

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from warden.api import features as fh
from warden.api import machines as mh
from warden.api.attach import attach
from warden.api.common import Ctx, Features
from warden.daemon.core import Daemon
from warden.errors import WardenError, http_status

log = logging.getLogger("warden.api")


Handler = Callable[[Ctx, web.Request], Awaitable[web.StreamResponse]]

# Every route, once. Order matters where patterns overlap: machines/{name}/{action} comes last
# (it would take POST machines/NAME/snapshots).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "status", mh.status),
    ("GET", "machines", mh.machines),
    ("GET", "machines/{name}", mh.machine),
    ("POST", "machines/{name}/mconsole", mh.mconsole),
    ("GET", "machines/{name}/lines/{line}/attach", attach),
    ("GET", "fleet", mh.get_fleet),
    ("POST", "fleet", mh.post_fleet),
    ("GET", "events", mh.events),
    ("GET", "events/stream", mh.event_stream),
    ("POST", "logs/flush", fh.logs_flush),
    ("GET", "sessions", fh.sessions),
    ("GET", "machines/{name}/jail", fh.jail_audit),
    ("GET", "machines/{name}/snapshots", fh.snapshot_list),
    ("POST", "machines/{name}/snapshots", fh.snapshot_take),
    ("POST", "machines/{name}/snapshots/{snap}/restore", fh.snapshot_restore),
    ("DELETE", "machines/{name}/snapshots/{snap}", fh.snapshot_delete),
    ("GET", "machines/{name}/diff", fh.disk_diff),
    ("GET", "memory", fh.memory_status),
    ("POST", "memory/{name}", fh.memory_set),
    ("GET", "honeypot", fh.honeypot_all),
    ("GET", "honeypot/{name}", fh.honeypot_one),
    ("POST", "honeypot/{name}/score", fh.honeypot_score),
    ("GET", "net", fh.net_ls),
    ("POST", "net/{name}/cut", fh.net_cut),
    ("POST", "net/{name}/restore", fh.net_restore),
    ("GET", "net/{name}/capture", fh.net_capture),
    ("GET", "machines/{name}/timeline", fh.timeline),
    ("POST", "machines/{name}/evidence", fh.evidence),
    ("POST", "machines/{name}/recycle", fh.recycle),
    ("POST", "web/link", fh.web_link),
    ("GET", "pools", fh.pools),
    ("POST", "machines/{name}/{action}", mh.action),
)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except WardenError as e:
        return web.json_response({"error": str(e)}, status=http_status(e))
    except TimeoutError:
        return web.json_response({"error": "timed out waiting for the guest"}, status=504)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("API %s %s", request.method, request.path)
        return web.json_response({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)


def _bind(ctx: Ctx, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(ctx, request)

    return bound


class Api:
    def __init__(self, daemon: Daemon, features: Features):
        self.daemon = daemon
        self.app = web.Application(middlewares=[errors])
        ctx = Ctx(daemon, features)
        for method, path, handler in ROUTES:
            self.app.router.add_route(method, "/v1/" + path, _bind(ctx, handler))
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
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


__all__ = ["Api", "Features"]
