"""The BootHook that wires a guest's NICs (see service.py for what each step does)."""

from typing import TYPE_CHECKING

from warden.daemon.context import BootExtras

if TYPE_CHECKING:
    from warden.daemon.supervisor import Supervisor
    from warden.net.service import NetService


class NetHook:
    name = "net"

    def __init__(self, service: "NetService"):
        self.service = service

    async def before_boot(self, sup: "Supervisor", extras: BootExtras) -> None:
        await self.service.guest_up(sup, extras)

    async def after_launch(self, sup: "Supervisor", pid: int) -> None:
        pass

    async def on_up(self, sup: "Supervisor") -> None:
        pass

    async def after_exit(self, sup: "Supervisor") -> None:
        await self.service.guest_down(sup)
