"""Session logs and the SSH concentrator, plugged into the daemon (Daemon._install_features).

- every terminal line gets a SessionLog (docs/formats/session-log.md) through ctx.logs;
- the log service closes logs a previous daemon left open, and owns the writer threads;
- the concentrator listens on the fleet file's [concentrator] listen address;
- API: POST /v1/logs/flush (for readers that want live files up to date), GET /v1/sessions.
"""

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from warden.console.concentrator import Concentrator
from warden.console.logservice import LogService

if TYPE_CHECKING:
    from warden.daemon.core import Daemon


def install(daemon: "Daemon") -> None:
    logs = LogService(daemon)
    conc = Concentrator(daemon)
    daemon.c.logs = logs.factory
    daemon.c.hooks.append(logs)  # kernel logs: relayed from each boot's FIFO
    daemon.services.append(logs)
    daemon.services.append(conc)

    async def flush(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, logs.writer.flush, 30.0)
        return web.json_response({"flushed": ok})

    async def sessions(request: web.Request) -> web.Response:
        out = [
            {
                "user": s.user,
                "source": s.source,
                "machine": s.attached,
                "line": s.line.name if s.line is not None else None,
                "writer": bool(s.client is not None and s.client.writer),
            }
            for s in conc.sessions
            if s.attached is not None
        ]
        return web.json_response({"listen": conc.listen, "port": conc.port, "sessions": out})

    daemon.add_route("POST", "logs/flush", flush)
    daemon.add_route("GET", "sessions", sessions)
