"""What every supervisor shares with the daemon: paths, state, host facts and the features.

Context implements seam.Core, the narrow view features get; the rest of it (the database, the
zygote, the event bus, the supervisors themselves) is the core's own.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from warden import guestinput
from warden.daemon.bootgate import BootGate
from warden.daemon.launcher import HostLauncher, Launcher
from warden.daemon.lines import LineLog, NullLog
from warden.daemon.seam import BootExtras, Control, Feature, Guest, LogFactory
from warden.errors import NotFound, SpecError
from warden.host import cgroup, cpuset
from warden.host.cgroup import Hierarchy
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.spec import fleet as fleetmod
from warden.spec.fleet import Fleet
from warden.store import Store

if TYPE_CHECKING:
    from warden.daemon.supervisor import Supervisor

log = logging.getLogger("warden.daemon")

EMPTY_FLEET = fleetmod.Fleet(source="<none>")

# BootExtras is declared by the seam; memory and the jail still import it from here until they
# move onto the seam's own names (docs/decisions/2026-12-07-structure.md).
__all__ = ["BootExtras", "Context", "EventBus", "GuestTable", "null_logs"]


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


class GuestTable:
    """The daemon's supervisors as seam.Guests: read-only, by name."""

    def __init__(self, sups: "dict[str, Supervisor]"):
        self._sups = sups

    def get(self, name: str) -> Guest | None:
        return self._sups.get(name)

    def require(self, name: str) -> Guest:
        sup = self._sups.get(name)
        if sup is None:
            raise NotFound(f"no machine named {name!r} (warden ls lists them)")
        return sup

    def __iter__(self) -> Iterator[Guest]:
        return iter(list(self._sups.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._sups


@dataclass
class Context:
    layout: Layout
    store: Store
    hierarchy: Hierarchy
    images: ImageStore
    fleet: Fleet
    bus: EventBus = field(default_factory=EventBus)
    # The features, in the composition root's order: every boot hook is called on each.
    features: list[Feature] = field(default_factory=list)
    zygote: Any = None  # warden.host.zygote.Zygote: forks launchers without a Python start-up
    # Starts kernels: the zygote or a fresh launcher (driver tests put a fake here).
    launcher: Launcher = field(init=False)
    # The daemon's machine operations, for features (the Daemon sets it: daemon/core.py).
    control: Control = field(init=False)
    # Boot slots: how many guests boot at once (daemon/admission.py).
    boots: BootGate = field(init=False)
    logs: LogFactory = null_logs
    # Why the stored fleet was not read (a newer warden refuses what an older one stored);
    # the daemon then refuses to start without a fleet file (Daemon.open, Daemon.start).
    stored_error: str | None = None
    machines: "dict[str, Supervisor]" = field(default_factory=dict)
    _gates: dict[str, guestinput.EventGate] = field(default_factory=dict)
    _gate_timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.launcher = HostLauncher(lambda: self.zygote)
        self.boots = BootGate(
            len(cpuset.host_cpus(self.hierarchy)),
            self.hierarchy.unified / f"warden-{self.layout.instance}",
            fixed=lambda: self.fleet.host.boot_slots,
        )

    @classmethod
    def load(cls, layout: Layout) -> "Context":
        """The state of `layout`'s home: its database, the fleet it last applied, the host's
        cgroups. Starts nothing."""
        layout.ensure()
        store = Store(layout.db)
        saved = store.load_fleet()
        fleet, stored_error = EMPTY_FLEET, None
        if saved is not None:
            try:
                fleet = fleetmod.parse(saved[1], saved[0])
            except SpecError as e:
                stored_error = f"the stored fleet (from {saved[0]}) no longer validates: {e}"
                log.error("%s", stored_error)
        ctx = cls(layout, store, cgroup.detect(), ImageStore(layout), fleet)
        ctx.stored_error = stored_error
        return ctx

    @property
    def guests(self) -> GuestTable:
        return GuestTable(self.machines)

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
