"""The web console in the daemon: warden.web.backend.Backend served by the Daemon and the
features whose numbers the pages show, and the web server on the seam.

The web console (warden.web) is a front end with its own HTTPS server for browsers; it sees the
daemon only through its Backend, which this module, in the composition root, implements: the
guests' rows and lines from the core's context, the four actions through Core.control, the
balancer's numbers from the memory feature, the timeline from the forensics feature, the
session-log flush from the console feature, the events from the core's bus. `WebFeature` runs
the server's life with the daemon's (last in the composition root's order: it reads the
others). The daemon's own route for it, POST /v1/web/link (`warden web link`), is in
warden.api like every route of the daemon's API.
"""

import asyncio
from collections.abc import Mapping
from typing import Any

from warden.console.feature import ConsoleFeature
from warden.daemon.context import Context
from warden.daemon.lines import Line
from warden.daemon.seam import Feature
from warden.errors import SpecError
from warden.forensics.feature import ForensicsFeature
from warden.memory.feature import MemoryFeature
from warden.paths import Layout
from warden.spec.fleet import Fleet
from warden.web.server import WebServer


class DaemonBackend:
    """warden.web.backend.Backend over the daemon's context and its features (the actions
    through Core.control, as the forensics feature's recycle)."""

    def __init__(
        self,
        ctx: Context,
        console: ConsoleFeature,
        memory: MemoryFeature,
        forensics: ForensicsFeature,
    ):
        self.ctx = ctx
        self.console = console
        self.memory_feature = memory
        self.forensics = forensics

    @property
    def layout(self) -> Layout:
        return self.ctx.layout

    @property
    def fleet(self) -> Fleet:
        return self.ctx.fleet

    def infos(self) -> Mapping[str, Mapping[str, Any]]:
        return {name: sup.info() for name, sup in self.ctx.machines.items()}

    def line(self, machine: str, line: str) -> Line | None:
        sup = self.ctx.machines.get(machine)
        if sup is None or line not in sup.spec.lines:
            return None
        return sup.lines.get(line)

    def attached(self) -> Mapping[str, int]:
        return {
            name: sum(len(ln.clients) for ln in sup.lines.values())
            for name, sup in self.ctx.machines.items()
        }

    async def action(self, machine: str, action: str) -> None:
        control = self.ctx.control
        if action == "start":
            control.start(machine)
        elif action == "stop":
            await control.stop(machine, wait=False)
        elif action == "kill":
            await control.kill(machine, wait=False)
        elif action == "reset":
            control.reset(machine)
        else:
            raise SpecError(f"unknown action {action!r}")

    def memory(self) -> Mapping[str, Any] | None:
        return self.memory_feature.snapshot()

    async def timeline(self, machine: str) -> dict[str, Any]:
        return await self.forensics.timeline(machine, None, None, False)

    async def flush_logs(self) -> None:
        await self.console.flush_logs(30.0)

    def subscribe(self) -> "asyncio.Queue[dict[str, Any]]":
        return self.ctx.bus.subscribe()

    def unsubscribe(self, queue: "asyncio.Queue[dict[str, Any]]") -> None:
        self.ctx.bus.unsubscribe(queue)

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        self.ctx.event(machine, kind, **detail)


class WebFeature(Feature):
    """The web server's life cycle on the daemon's (it has no boot hooks)."""

    name = "web"

    def __init__(self, server: WebServer):
        self.server = server

    async def check_fleet(self, fleet: Fleet) -> None:
        # reads a given certificate and key: off the loop
        await asyncio.get_running_loop().run_in_executor(None, self.server.check_fleet, fleet)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def fleet_changed(self) -> None:
        self.server.fleet_changed()


async def greeting(server: WebServer, host_user: str) -> list[str]:
    """What `warden up` prints when the fleet serves the web console: a one-time
    administrator's link for the user who ran it (root on the host)."""
    if not await server.listening():
        return []
    out = server.login_link(None, True, host_user, 0)
    lines = [
        f"warden: web console: open {out['url']}",
        "warden:   (one use, within 15 minutes; `warden web link OWNER` makes links for owners)",
    ]
    if out.get("fingerprint"):
        lines.append(f"warden:   certificate SHA-256 {out['fingerprint']}")
    return lines
