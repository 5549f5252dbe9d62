"""The one place the web console meets the daemon: warden.web.backend.Backend over a Daemon.

Installed last by Daemon._install_features (after the console, memory and forensics features,
whose services it reads). It adds the web server as a daemon service (start, stop,
fleet_changed, check_fleet) and one route to the daemon's UNIX-socket API:

    POST /v1/web/link  {"owner": NAME | null, "admin": bool, "ttl": seconds}
        -> {"url", "expires", "user", "fingerprint"}      (`warden web link`)
"""

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from warden.console.logservice import LogService
from warden.daemon.lines import Line
from warden.errors import SpecError, WardenError
from warden.forensics.feature import RecycleDriver
from warden.memory.balancer import Balancer
from warden.paths import Layout
from warden.spec.fleet import Fleet
from warden.web.server import WebServer

if TYPE_CHECKING:
    from warden.daemon.core import Daemon


class DaemonBackend:
    """warden.web.backend.Backend, served by the daemon and its features' services."""

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def _service(self, kind: type[Any]) -> Any:
        return next((s for s in self.daemon.services if isinstance(s, kind)), None)

    @property
    def layout(self) -> Layout:
        return self.daemon.layout

    @property
    def fleet(self) -> Fleet:
        return self.daemon.c.fleet

    def infos(self) -> Mapping[str, Mapping[str, Any]]:
        return {name: sup.info() for name, sup in self.daemon.sups.items()}

    def line(self, machine: str, line: str) -> Line | None:
        sup = self.daemon.sups.get(machine)
        if sup is None or line not in sup.spec.lines:
            return None
        return sup.lines.get(line)

    def attached(self) -> Mapping[str, int]:
        return {
            name: sum(len(ln.clients) for ln in sup.lines.values())
            for name, sup in self.daemon.sups.items()
        }

    async def action(self, machine: str, action: str) -> None:
        d = self.daemon
        if action == "start":
            d.start_machine(machine)
        elif action == "stop":
            await d.stop_machine(machine, wait=False)
        elif action == "kill":
            await d.kill_machine(machine, wait=False)
        elif action == "reset":
            d.reset_machine(machine)
        else:
            raise SpecError(f"unknown action {action!r}")

    def memory(self) -> Mapping[str, Any] | None:
        balancer: Balancer | None = self._service(Balancer)
        return balancer.snapshot() if balancer is not None else None

    async def timeline(self, machine: str) -> dict[str, Any]:
        driver: RecycleDriver | None = self._service(RecycleDriver)
        if driver is None:
            raise WardenError("this daemon has no timeline feature")
        tl = await driver.ops.timeline(machine, None, None, False)
        return {"meta": tl.meta(), "entries": tl.as_json()}

    async def flush_logs(self) -> None:
        logs: LogService | None = self._service(LogService)
        if logs is not None:
            await asyncio.get_running_loop().run_in_executor(None, logs.writer.flush, 30.0)

    def subscribe(self) -> "asyncio.Queue[dict[str, Any]]":
        return self.daemon.c.bus.subscribe()

    def unsubscribe(self, queue: "asyncio.Queue[dict[str, Any]]") -> None:
        self.daemon.c.bus.unsubscribe(queue)

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        self.daemon.c.event(machine, kind, **detail)


def install(daemon: "Daemon") -> WebServer:
    from warden.api.server import _peer_user

    server = WebServer(DaemonBackend(daemon))
    daemon.services.append(server)

    async def link(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            raise SpecError("request body is not JSON") from None
        owner, ttl = body.get("owner"), body.get("ttl", 0)
        if owner is not None and not isinstance(owner, str):
            raise SpecError('expected {"owner": NAME or null, "admin": bool, "ttl": seconds}')
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise SpecError(f"ttl {ttl!r}: expected a number of seconds")
        out = server.login_link(owner, bool(body.get("admin")), _peer_user(request), float(ttl))
        return web.json_response(out)

    daemon.add_route("POST", "web/link", link)
    return server


async def greeting(daemon: "Daemon", host_user: str) -> list[str]:
    """What `warden up` prints when the fleet serves the web console: a one-time
    administrator's link for the user who ran it (root on the host)."""
    server = next((s for s in daemon.services if isinstance(s, WebServer)), None)
    if server is None or not await server.listening():
        return []
    out = server.login_link(None, True, host_user, 0)
    lines = [
        f"warden: web console: open {out['url']}",
        "warden:   (one use, within 15 minutes; `warden web link OWNER` makes links for owners)",
    ]
    if out.get("fingerprint"):
        lines.append(f"warden:   certificate SHA-256 {out['fingerprint']}")
    return lines
