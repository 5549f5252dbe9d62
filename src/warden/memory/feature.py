"""The memory balancer as a feature of the daemon (warden.memory.balancer does the work).

check_start   admission refused before a start changes anything
before_boot   admission again and room in the budget for the boot size; ledger reset at "up"
start/stop    the balancing loop; fleet_changed: the budget again
for the API   `snapshot` (what `warden top` shows), `set_size` (`warden mem set`)

Until the balancer is split into a driver over the seam and its pure parts (ws/mem lands
first; docs/decisions/2026-12-07-structure.md), it still reads the core's supervisors: this
class hands it a view with the names it uses, and the core's Supervisor for each hook.
"""

from typing import TYPE_CHECKING, Any, cast

from warden.daemon.seam import BootExtras, Feature, Guest
from warden.memory.balancer import Balancer

if TYPE_CHECKING:
    from warden.daemon.context import Context
    from warden.daemon.supervisor import Supervisor


class _DaemonView:
    """The three names Balancer reads of the daemon: sups, c (for the fleet) and layout."""

    def __init__(self, ctx: "Context"):
        self.sups = ctx.machines
        self.c = ctx
        self.layout = ctx.layout


class MemoryFeature(Feature):
    name = "memory"

    def __init__(self, ctx: "Context"):
        self.balancer = Balancer(_DaemonView(ctx))  # type: ignore[arg-type]

    async def start(self) -> None:
        await self.balancer.start()

    async def stop(self) -> None:
        await self.balancer.stop()

    def fleet_changed(self) -> None:
        self.balancer.fleet_changed()

    def check_start(self, guest: Guest) -> None:
        self.balancer.check_start(_sup(guest))

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        await self.balancer.before_boot(_sup(guest), extras)

    async def after_launch(self, guest: Guest, pid: int) -> None:
        await self.balancer.after_launch(_sup(guest), pid)

    async def on_up(self, guest: Guest) -> None:
        await self.balancer.on_up(_sup(guest))

    async def after_exit(self, guest: Guest) -> None:
        await self.balancer.after_exit(_sup(guest))

    def snapshot(self) -> dict[str, Any]:
        return self.balancer.snapshot()

    async def set_size(self, name: str, size: int | None) -> dict[str, Any]:
        """Pin a running guest's memory at `size` (None: the balancer decides again)."""
        return await self.balancer.set_size(name, size)


def _sup(guest: Guest) -> "Supervisor":
    return cast("Supervisor", guest)
