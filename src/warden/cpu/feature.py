"""CPU placement as a feature of the daemon: the thin driver of warden.cpu.placement.

- check_fleet: a pinned CPU (`cpu = N` or a list) this host does not let warden use is refused,
  naming the machine, the key and the CPUs allowed, before anything is applied;
- before_boot: the guest's CPU is chosen and written to its cgroup's cpuset before the kernel
  is launched (its processes join that group at exec, so the first instruction of the boot
  already runs there); a boot that fails before launch gives the CPU back;
- start: guests a restarted daemon re-attached to are adopted where they run;
- every `INTERVAL` seconds: each placed guest's CPU time (cpu.stat usage_usec of its group) and
  the host's busy time per CPU (/proc/stat) are read off the loop, the policy decides, and a
  move is one write of the group's cpuset.cpus: the kernel moves every process of the guest
  together. Each move is an event (`cpu-moved`).

The CPUs a guest is on are shown by `warden ls --json` ("cpu", the kernel's list format).
"""

import asyncio
import contextlib
import logging
import os
import time

from warden.cpu.placement import Placement, Settings
from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.errors import SpecError, WardenError
from warden.host import cpuset
from warden.spec.fleet import Fleet
from warden.tasks import spawn

log = logging.getLogger("warden.cpu")

INTERVAL = 2.0  # seconds between looks at the guests' CPU use
STAT = "/proc/stat"


class CpuFeature(Feature):
    name = "cpu"

    def __init__(self, core: Core, interval: float = INTERVAL, settings: Settings | None = None):
        self.core = core
        self.interval = interval
        self.enabled = cpuset.available(core.hierarchy)
        self.host_cpus = cpuset.host_cpus(core.hierarchy)
        self.policy = Placement(self.host_cpus, settings or Settings())
        self._task: asyncio.Task[None] | None = None
        self._usage: dict[str, tuple[int, float]] = {}  # guest -> (usage_usec, monotonic)
        self._busy: tuple[dict[int, int], float] | None = None  # /proc/stat ticks, monotonic
        self._warned = False

    async def check_fleet(self, fleet: Fleet) -> None:
        allowed = set(self.host_cpus)
        problems = []
        for spec in fleet.machines:
            bad = [c for c in spec.cpu if c not in allowed]
            if bad:
                value = spec.cpu[0] if len(spec.cpu) == 1 else list(spec.cpu)
                problems.append(
                    f"{fleet.source}: machine {spec.name!r}: cpu = {value}: CPU "
                    f"{', '.join(map(str, bad))} is not one warden may use on this host; "
                    f"allowed: {cpuset.format_list(self.host_cpus)}"
                )
        if problems:
            raise SpecError("\n".join(problems))

    async def start(self) -> None:
        if not self.enabled:
            return
        for guest in self.core.guests:
            if guest.state in m.LIVE:
                cpus = cpuset.cpus_of(guest.cgroup)
                if cpus:
                    self.policy.adopt(guest.name, cpus, pinned=bool(guest.spec.cpu))
                    guest.cpus = cpuset.format_list(cpus)
        self._task = spawn(self._loop(), "cpu-placement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- boots
    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        if not self.enabled:
            if not self._warned:
                self._warned = True
                self.core.event(
                    None,
                    "cpu-placement-off",
                    reason=f"no cpuset controller: {self.core.hierarchy.describe()}",
                )
            return
        name = guest.name
        cpus = self.policy.place(name, guest.spec.cpu)
        extras.cleanup.append(lambda: self._forget(guest))
        cpuset.set_cpus(guest.cgroup, cpus)
        guest.cpus = cpuset.format_list(cpus)
        self._usage.pop(name, None)

    async def after_exit(self, guest: Guest) -> None:
        self._forget(guest)

    def _forget(self, guest: Guest) -> None:
        self.policy.release(guest.name)
        self._usage.pop(guest.name, None)
        guest.cpus = None

    # ---- the loop
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                names = [n for n in self.policy.guests() if n in self.core.guests]
                readings = await loop.run_in_executor(None, self._read, names)
                self.rebalance(*readings)
            except WardenError as e:
                log.warning("cpu placement: %s", e)

    def _read(self, names: list[str]) -> tuple[dict[str, float], dict[int, float] | None]:
        """Off the loop: each guest's CPU share since the last look, and the share of each CPU
        the rest of the host used (busy time minus the guests placed on it)."""
        now = time.monotonic()
        shares: dict[str, float] = {}
        for name in names:
            guest = self.core.guests.get(name)
            if guest is None:
                continue
            used = cpuset.usage_usec(guest.cgroup)
            if used is None:
                continue
            last = self._usage.get(name)
            self._usage[name] = (used, now)
            if last is not None and now > last[1]:
                shares[name] = (used - last[0]) / 1e6 / (now - last[1])
        with open(STAT) as f:
            busy = cpuset.busy_per_cpu(f.read())
        other: dict[int, float] | None = None
        if self._busy is not None and now > self._busy[1]:
            ticks = float(os.sysconf("SC_CLK_TCK"))
            prev, at = self._busy
            guests_on = dict.fromkeys(self.host_cpus, 0.0)
            for name, share in shares.items():
                where = self.policy.where(name) or ()
                for c in where:
                    if c in guests_on:
                        guests_on[c] += share / len(where)
            other = {
                c: (busy.get(c, 0) - prev.get(c, 0)) / ticks / (now - at) - guests_on[c]
                for c in self.host_cpus
            }
        self._busy = (busy, now)
        return shares, other

    def rebalance(self, shares: dict[str, float], other: dict[int, float] | None) -> None:
        for move in self.policy.observe(shares, other):
            guest = self.core.guests.get(move.name)
            if guest is None or guest.state not in m.LIVE:
                continue
            try:
                cpuset.set_cpus(guest.cgroup, (move.cpu_to,))
            except WardenError as e:
                self.core.event(move.name, "cpu-move-failed", error=str(e))
                continue
            guest.cpus = str(move.cpu_to)
            self.core.event(
                move.name,
                "cpu-moved",
                cpu_from=move.cpu_from,
                cpu_to=move.cpu_to,
                load=round(move.load, 2),
                from_load=round(move.src_load, 2),
                to_load=round(move.dst_load, 2),
            )
