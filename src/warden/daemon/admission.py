"""How many guests boot at once: a pure policy (no I/O) of boot slots, fed with measured load.

Why (issue 19): a UML boot costs ~1.3 s of CPU. 500 guests started at once on 2 CPUs ran 500
boots at once (load average 64): each took minutes of wall time, and 57 hit the 120 s boot
timeout. More boots at once than the CPUs can run buys no throughput, only longer boots; so
boots take a slot, and a boot without one waits its turn (first come, first served).

- The limit is `per_cpu` boots per CPU the rest of the host leaves free: with `other` CPUs
  busy with work that is not warden's (its guests, the daemon and its helpers; measured,
  smoothed), the limit is
  round(per_cpu x (cpus - other)), at least `min_slots`, at most per_cpu x cpus. It moves by
  one slot per observation (hysteresis: a burst of other work does not empty the pipeline).
- A fleet may fix the number (`[host] boot_slots = N`): then no reading changes it.
- A slot is held from admission until the boot has settled: the kernel is up (its mconsole
  notify, early in the boot) and then the guest used less than `settled_cpu` of a CPU over an
  interval, or `settle_max` seconds passed since it came up; or until the boot ends or fails.
  About half of a minimal guest's boot CPU comes after "up" (0.32 s of 0.55 s measured here:
  init and its scripts), so a slot given back at "up" would let boots pile up.
- A boot that waits gets its boot timeout only when admitted (daemon/machine.py, Queued and
  Admitted): no boot times out because others are booting.
"""

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    per_cpu: float = 2.0  # boots per free CPU: a boot also waits on its disk, not only the CPU
    min_slots: int = 1
    smoothing: float = 0.5  # weight of the newest reading of the other work
    settled_cpu: float = 0.1  # a guest up and using less than this share of a CPU has booted
    settle_max: float = 15.0  # seconds after "up" a boot holds its slot at most


@dataclass
class Admission:
    cpus: int
    settings: Settings = field(default_factory=Settings)
    limit: int = 0  # slots now (0: per_cpu x cpus, set at start)
    fixed: int = 0  # the fleet's boot_slots (0: the limit follows the measured load)
    other: float = 0.0  # CPUs busy with other work (smoothed)
    _booting: set[str] = field(default_factory=set)
    _settling: dict[str, float] = field(default_factory=dict)  # up, not settled: name -> since
    _queue: "OrderedDict[str, float]" = field(default_factory=OrderedDict)  # name -> since

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError("admission needs at least one CPU")
        if not self.limit:
            self.limit = self.ceiling

    @property
    def ceiling(self) -> int:
        return max(self.settings.min_slots, round(self.settings.per_cpu * self.cpus))

    @property
    def booting(self) -> int:
        return len(self._booting)

    def queued(self) -> list[str]:
        return list(self._queue)

    def position(self, name: str) -> int | None:
        """1 for the next boot to be admitted; None if `name` is not waiting."""
        for i, n in enumerate(self._queue, 1):
            if n == name:
                return i
        return None

    def reason(self, name: str) -> str:
        """What `warden ls` says of a waiting boot."""
        pos = self.position(name)
        if pos is None:
            return ""
        return (
            f"boot queued: {pos} of {len(self._queue)} waiting, {self.booting} booting "
            f"(limit {self.limit} for {self.cpus} CPUs, {self.other:.1f} busy with other work)"
        )

    def set_fixed(self, slots: int) -> list[str]:
        """The fleet's `boot_slots` (0: automatic again, from the ceiling down); the boots
        admitted by a raised number."""
        if slots != self.fixed:
            self.fixed = slots
            self.limit = slots or self.ceiling
        return self._admit()

    # ---- boots come and go
    def request(self, name: str, now: float) -> bool:
        """True: boot now (a slot is taken). False: it waits (queued) until `admit` names it."""
        if name in self._booting:
            return True
        if not self._queue and len(self._booting) < self.limit:
            self._booting.add(name)
            return True
        self._queue.setdefault(name, now)
        return False

    def up(self, name: str, now: float) -> None:
        """The kernel is up: the boot keeps its slot until it settles (`observe`)."""
        if name in self._booting:
            self._settling.setdefault(name, now)

    def settling(self) -> list[str]:
        return list(self._settling)

    def done(self, name: str) -> list[str]:
        """The boot is over (settled, ended, failed, or called off while it waited): its slot
        or its place is given up; the boots admitted in its stead."""
        self._booting.discard(name)
        self._settling.pop(name, None)
        self._queue.pop(name, None)
        return self._admit()

    def waited(self, name: str, now: float) -> float:
        since = self._queue.get(name)
        return now - since if since is not None else 0.0

    def _admit(self) -> list[str]:
        out = []
        while self._queue and len(self._booting) < self.limit:
            name, _ = self._queue.popitem(last=False)
            self._booting.add(name)
            out.append(name)
        return out

    # ---- once an interval
    def observe(
        self, other_busy: float, settling: dict[str, float] | None = None, now: float = 0.0
    ) -> list[str]:
        """`other_busy`: CPUs the rest of the host used over the last interval (busy time of
        every CPU minus what warden's guests used); `settling`: the share of a CPU each guest
        that is up but not settled used over it. Returns the boots admitted now."""
        s = self.settings
        for name, since in list(self._settling.items()):
            rate = (settling or {}).get(name)
            if (rate is not None and rate < s.settled_cpu) or now - since >= s.settle_max:
                self._booting.discard(name)
                del self._settling[name]
        reading = min(max(other_busy, 0.0), float(self.cpus))
        self.other = s.smoothing * reading + (1 - s.smoothing) * self.other
        if self.fixed:
            return self._admit()
        free = max(0.0, self.cpus - self.other)
        target = max(s.min_slots, min(self.ceiling, round(s.per_cpu * free)))
        if target > self.limit:
            self.limit += 1
        elif target < self.limit:
            self.limit -= 1
        return self._admit()
