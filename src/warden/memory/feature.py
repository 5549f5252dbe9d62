"""The memory balancer as a feature of the daemon (warden.memory.balancer does the work).

check_start   admission refused before a start changes anything
before_boot   admission again and room in the budget for the boot size; ledger reset at "up"
start/stop    the balancing loop; fleet_changed: the budget again
notified      MEMORY from a guest's OOM hook (kernel/0004): a hint that starts a rescue
for the API   `snapshot` (what `warden top` shows), `set_size` (`warden mem set`)

The balancer works on the seam (Core, Guest); its split into a thin driver and a per-guest
record is still to come (docs/decisions/2026-12-07-structure.md, "Left for later").
"""

from typing import Any

from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.memory.balancer import Balancer
from warden.uml.mconsole import Notify, NotifyType


class MemoryFeature(Feature):
    name = "memory"

    def __init__(self, core: Core):
        self.balancer = Balancer(core)

    async def start(self) -> None:
        await self.balancer.start()

    async def stop(self) -> None:
        await self.balancer.stop()

    def fleet_changed(self) -> None:
        self.balancer.fleet_changed()

    def check_start(self, guest: Guest) -> None:
        self.balancer.check_start(guest)

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        await self.balancer.before_boot(guest, extras)

    async def after_launch(self, guest: Guest, pid: int) -> None:
        await self.balancer.after_launch(guest, pid)

    async def on_up(self, guest: Guest) -> None:
        await self.balancer.on_up(guest)

    async def after_exit(self, guest: Guest) -> None:
        await self.balancer.after_exit(guest)

    def notified(self, guest: Guest, note: Notify) -> bool:
        if note.type is not NotifyType.MEMORY:
            return False
        self.balancer.memory_notified(guest, note.data)
        return True

    def snapshot(self) -> dict[str, Any]:
        return self.balancer.snapshot()

    async def set_size(self, name: str, size: int | None) -> dict[str, Any]:
        """Pin a running guest's memory at `size` (None: the balancer decides again)."""
        return await self.balancer.set_size(name, size)
