"""The honeypot kernel, plugged into the daemon (Daemon._install_features calls install).

- a BootHook gives machines with `tty_log`/`disguise` their channels (warden.honeypot.service);
- the service checks fleets before they are applied, re-attaches the channels of guests that
  outlived the previous daemon, and applies changed disguise profiles to running guests;
- API: GET /v1/honeypot (every honeypot guest), GET /v1/honeypot/NAME: the tty log's and the
  disguise's state and counters, the kernel's own tty-log counters from its last poll;
  POST /v1/honeypot/NAME/score: the detection score (warden.honeypot.score), run on its console.
"""

from typing import TYPE_CHECKING

from aiohttp import web

from warden.daemon.context import BootExtras
from warden.honeypot.score.service import score_machine
from warden.honeypot.service import HoneypotService

if TYPE_CHECKING:
    from warden.daemon.core import Daemon
    from warden.daemon.supervisor import Supervisor


class HoneypotHook:
    name = "honeypot"

    def __init__(self, service: HoneypotService):
        self.service = service

    async def before_boot(self, sup: "Supervisor", extras: BootExtras) -> None:
        await self.service.prepare(sup, extras)

    async def after_launch(self, sup: "Supervisor", pid: int) -> None:
        await self.service.launched(sup, pid)

    async def on_up(self, sup: "Supervisor") -> None:
        pass

    async def after_exit(self, sup: "Supervisor") -> None:
        await self.service.exited(sup)


def install(daemon: "Daemon") -> None:
    service = HoneypotService(daemon)
    # First among the services: at start it must re-open the tty logs of re-attached guests
    # before the session-log service closes every log nobody has re-opened (finalize_stale).
    daemon.services.insert(0, service)
    daemon.c.hooks.append(HoneypotHook(service))

    async def all_guests(request: web.Request) -> web.Response:
        return web.json_response(service.status())

    async def one_guest(request: web.Request) -> web.Response:
        return web.json_response(service.status(request.match_info["name"])[0])

    daemon.add_route("GET", "honeypot", all_guests)

    async def score(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        report = await score_machine(daemon, request.match_info["name"], body)
        return web.json_response(report)

    daemon.add_route("GET", "honeypot/{name}", one_guest)
    daemon.add_route("POST", "honeypot/{name}/score", score)
