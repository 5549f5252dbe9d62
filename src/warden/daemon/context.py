"""What every supervisor shares with the daemon: paths, state, host facts and plug-ins.

Features that add something to a boot (a NIC's tap fd, the honeypot kernel's tty-log fd, a
jail) do it through BootHook objects registered here, so the supervisor stays generic.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from warden import guestinput
from warden.daemon.lines import LineLog, NullLog
from warden.host.cgroup import Hierarchy
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.spec.fleet import Fleet
from warden.store import Store

if TYPE_CHECKING:
    from warden.daemon.supervisor import Supervisor
    from warden.uml.mconsole import Notify

log = logging.getLogger("warden.daemon")


@dataclass
class BootExtras:
    """What hooks add to one boot. fds are passed to the kernel and closed after launch."""

    fds: list[int] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    network: dict[str, str] = field(default_factory=dict)  # seed network.env
    jail: dict[str, Any] | None = None  # warden.host.jail plan, set by the jail hook
    # Host path -> the path the kernel sees it at (a jail bind-mounts files elsewhere).
    paths: dict[str, str] = field(default_factory=dict)
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    hostname: str = ""  # the guest's hostname if not the machine's name (a honeypot persona)

    def view(self, path: Path) -> Path:
        """Where the kernel sees host file `path` (itself, unless a hook remapped it)."""
        return Path(self.paths.get(str(path), str(path)))

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class BootHook(Protocol):
    name: str

    async def before_boot(self, sup: "Supervisor", extras: BootExtras) -> None:
        """Add fds/args/env for this boot; raise WardenError to refuse the start."""

    async def after_launch(self, sup: "Supervisor", pid: int) -> None:
        """The kernel process exists (not yet up)."""

    async def on_up(self, sup: "Supervisor") -> None:
        """The kernel answers its mconsole."""

    async def after_exit(self, sup: "Supervisor") -> None:
        """The kernel and every process of the guest are gone."""


class LogFactory(Protocol):
    def __call__(self, machine: str, line: str, boot: int, reattach: bool) -> LineLog: ...


def null_logs(machine: str, line: str, boot: int, reattach: bool) -> LineLog:
    return NullLog()


class EventBus:
    """Fan-out of events (dicts) to API watchers; a slow watcher loses events, not the daemon."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []

    def subscribe(self) -> "asyncio.Queue[dict[str, Any]]":
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: "asyncio.Queue[dict[str, Any]]") -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)

    def publish(self, event: dict[str, Any]) -> None:
        for q in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)


@dataclass
class Context:
    layout: Layout
    store: Store
    hierarchy: Hierarchy
    images: ImageStore
    fleet: Fleet
    bus: EventBus = field(default_factory=EventBus)
    hooks: list[BootHook] = field(default_factory=list)
    zygote: Any = None  # warden.host.zygote.Zygote: forks launchers without a Python start-up
    logs: LogFactory = null_logs
    _gates: dict[str, guestinput.EventGate] = field(default_factory=dict)
    _gate_timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # Notify types a feature takes (int: warden.uml.mconsole.NotifyType), called at once
    # from the socket's reader; anything else becomes a guest-notify event.
    on_notify: dict[int, Callable[["Supervisor", "Notify"], None]] = field(default_factory=dict)

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        """An event the daemon itself decided on: always stored (off the loop: store.py)."""
        self.store.event(machine, kind, **detail)
        self.bus.publish({"machine": machine, "kind": kind, **detail})

    def guest_event(self, machine: str, kind: str, **detail: Any) -> None:
        """An event a guest can cause at will (what it sends on its channels): stored within the
        guest's event budget (guestinput.EVENTS_PER_MINUTE); beyond it counted by kind and
        reported in one `events-suppressed` event a minute."""
        gate = self._gates.get(machine)
        if gate is None:
            gate = self._gates[machine] = guestinput.event_gate()
        now = time.monotonic()
        if gate.admit(now, kind):
            self.event(machine, kind, **detail)
            return
        if machine not in self._gate_timers:
            deadline = gate.deadline()
            assert deadline is not None
            with contextlib.suppress(RuntimeError):  # no loop: reported with the next event
                self._gate_timers[machine] = asyncio.get_running_loop().call_later(
                    max(0.0, deadline - now), self._report_suppressed, machine
                )

    def _report_suppressed(self, machine: str) -> None:
        self._gate_timers.pop(machine, None)
        gate = self._gates.get(machine)
        report = gate.due(time.monotonic(), force=True) if gate is not None else None
        if report is not None:
            self.event(machine, "events-suppressed", **report)
