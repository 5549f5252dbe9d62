"""Guest networking as a feature of the daemon (warden.net.service does the work).

- load: state.json, what a previous daemon built (before any fleet is checked);
- check_fleet: tools, addresses, running guests' networks, and what is already in the
  namespace (another home's tables, foreign interfaces, overlapping subnets, bound ports);
- before_boot: taps opened and handed to the kernel, rules, capture; after_exit: undone;
- for the API: `ls`, `cut`/`restore` (timed), `capture` (an on-demand pcap stream).
"""

import time
from typing import Any

from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.net.client import AgentClient
from warden.net.ondemand import CaptureStream
from warden.net.service import AgentFactory, NetService
from warden.spec.fleet import Fleet


class NetFeature(Feature):
    name = "net"

    def __init__(self, core: Core, agent_factory: AgentFactory = AgentClient):
        self.service = NetService(core, agent_factory)

    def load(self) -> None:
        self.service.load()

    async def check_fleet(self, fleet: Fleet) -> None:
        await self.service.check_fleet(fleet)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def fleet_changed(self) -> None:
        self.service.fleet_changed()

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        await self.service.guest_up(guest, extras)

    async def after_exit(self, guest: Guest) -> None:
        await self.service.guest_down(guest)

    # ---- what the API serves
    async def ls(self) -> dict[str, Any]:
        return await self.service.ls()

    async def cut(self, name: str, cut: bool) -> dict[str, Any]:
        """Cut (or restore) every frame to and from the guest; the answer says how long the
        change took."""
        t0 = time.monotonic()
        out = await self.service.set_cut(name, cut)
        out["seconds"] = time.monotonic() - t0
        return out

    async def capture(self, name: str, nic: int, count: int | None) -> CaptureStream:
        return await self.service.open_capture(name, nic, count)
