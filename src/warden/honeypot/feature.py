"""The honeypot kernel as a feature of the daemon (warden.honeypot.service does the work).

- machines with `tty_log`/`disguise` get their channels before each boot (`prepare`), their
  tty log read and disguise served once launched, both closed when the kernel is gone;
- fleets are checked before they are applied (a missing or unpatched kernel, a malformed
  profile, a jail-less honeypot, a tty log without session logs);
- at start it re-attaches the channels of guests that outlived the previous daemon: it must
  come before the console feature in the composition root, whose start closes every log that
  nobody has re-opened by then (the tty logs among them);
- a re-applied fleet puts changed disguise profiles in force in running guests;
- a disguised guest on a kernel with kernel/0010 shows its persona (warden.persona);
- for the API: `status` (every honeypot guest, or one), `score` (the detection score,
  warden.honeypot.score, run on the guest's console).

Its boot hooks need the guest's uid, which the jail feature gives in its before_boot: it comes
after the jail in the composition root.
"""

import asyncio
from typing import Any

from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.honeypot.score.service import score_machine
from warden.honeypot.service import HoneypotService
from warden.spec.fleet import Fleet


class HoneypotFeature(Feature):
    name = "honeypot"

    def __init__(self, core: Core):
        self.core = core
        self.service = HoneypotService(core)

    async def check_fleet(self, fleet: Fleet) -> None:
        # Reads profiles and kernels: off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self.service.check_fleet, fleet)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def fleet_changed(self) -> None:
        self.service.fleet_changed()

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        await self.service.prepare(guest, extras)

    async def after_launch(self, guest: Guest, pid: int) -> None:
        await self.service.launched(guest, pid)

    async def after_exit(self, guest: Guest) -> None:
        await self.service.exited(guest)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.service.status(name)

    async def score(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await score_machine(self.core, name, body)
