"""Which CPU each guest runs on: a pure policy (no I/O), fed with measured loads.

Why: a UML guest's system call is a ptrace round trip between its kernel process and the host
process that runs the guest's program. On two CPUs every round trip pays a cross-CPU wake-up;
on one CPU it does not (issue 19: 48 us per syscall unplaced, 12 us on one CPU). So each guest
gets exactly one CPU, all of its host processes together, and guests are spread over the
host's CPUs by what they use.

- `place(name, pin)`: a guest about to boot gets the CPU with the least load (measured load of
  the guests there, plus the rest of the host's work on it, plus a booting guest's expected
  cost until it is measured); ties go to the CPU with the fewest guests, so idle guests are
  spread evenly. A pinned guest (fleet `cpu = N` or a list) gets its pin and never moves.
- `observe(loads, other)`: once an interval, the CPU share each guest used (and what the
  host's other work used on each CPU). A CPU is contended when its load is above
  `contended`; then the busy guest whose move to the least-loaded CPU lowers the higher of the
  two loads by at least `margin` is moved (the one that lowers it most). Hysteresis: a moved
  guest stays for `cooldown` intervals, at most `max_moves` moves are made per interval, and a
  move that would only swap which CPU is overloaded is never made (the margin).

Loads are shares of one CPU (1.0 = one CPU busy all the interval), smoothed over intervals.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    contended: float = 0.9  # a CPU whose load is above this may give a guest away
    busy: float = 0.25  # only a guest using at least this share is worth moving
    margin: float = 0.3  # a move must lower the higher of the two CPUs' loads by this much
    cooldown: int = 5  # intervals a moved (or new) guest stays where it is
    max_moves: int = 1  # moves per interval
    boot_load: float = 1.0  # a booting guest's load until it is measured (~1.3 s of CPU)
    smoothing: float = 0.5  # weight of the newest reading in a guest's load


@dataclass(frozen=True)
class Move:
    name: str
    cpu_from: int
    cpu_to: int
    load: float  # the guest's load that made it move
    src_load: float  # its CPU's load before the move
    dst_load: float  # the target's load before the move


@dataclass
class _Slot:
    cpus: tuple[int, ...]
    pinned: bool
    load: float
    measured: bool = False
    age: int = 0  # intervals since it was placed or moved


@dataclass
class Placement:
    cpus: tuple[int, ...]  # the CPUs guests may be given (the host's)
    settings: Settings = field(default_factory=Settings)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _other: dict[int, float] = field(default_factory=dict)  # the host's own work per CPU

    def __post_init__(self) -> None:
        if not self.cpus:
            raise ValueError("a placement needs at least one CPU")
        self.cpus = tuple(sorted(set(self.cpus)))

    # ---- what it holds
    def where(self, name: str) -> tuple[int, ...] | None:
        slot = self._slots.get(name)
        return slot.cpus if slot is not None else None

    def guests(self) -> list[str]:
        return list(self._slots)

    def loads(self) -> dict[int, float]:
        """The load of every CPU: its guests' (a guest on several CPUs counts evenly on each)
        and the host's other work."""
        out = {c: self._other.get(c, 0.0) for c in self.cpus}
        for slot in self._slots.values():
            share = slot.load / len(slot.cpus)
            for c in slot.cpus:
                if c in out:
                    out[c] += share
        return out

    def _counts(self) -> dict[int, int]:
        out = dict.fromkeys(self.cpus, 0)
        for slot in self._slots.values():
            if len(slot.cpus) == 1 and slot.cpus[0] in out:
                out[slot.cpus[0]] += 1
        return out

    # ---- guests come and go
    def place(self, name: str, pin: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The CPUs of a guest about to boot: its pin, or the least-loaded CPU."""
        self._slots.pop(name, None)
        if pin:
            self._slots[name] = _Slot(tuple(sorted(pin)), True, self.settings.boot_load)
            return self._slots[name].cpus
        loads, counts = self.loads(), self._counts()
        cpu = min(self.cpus, key=lambda c: (round(loads[c], 2), counts[c], c))
        self._slots[name] = _Slot((cpu,), False, self.settings.boot_load)
        return (cpu,)

    def adopt(self, name: str, cpus: tuple[int, ...], pinned: bool) -> None:
        """A guest already running on `cpus` (re-attached by a new daemon): it stays there
        until it is measured, and may move after that like any other unpinned guest."""
        self._slots[name] = _Slot(tuple(sorted(cpus)), pinned, 0.0, age=self.settings.cooldown)

    def release(self, name: str) -> None:
        self._slots.pop(name, None)

    # ---- once an interval
    def observe(self, loads: dict[str, float], other: dict[int, float] | None = None) -> list[Move]:
        """Measured shares of a CPU (guests by name; the host's other work by CPU) in; the
        moves to make out. Guests not in `loads` keep their last load."""
        s = self.settings
        if other is not None:
            self._other = {c: max(0.0, v) for c, v in other.items() if c in self.cpus}
        for name, slot in self._slots.items():
            slot.age += 1
            if name in loads:
                value = max(0.0, loads[name])
                if slot.measured:
                    slot.load = s.smoothing * value + (1 - s.smoothing) * slot.load
                else:
                    slot.load, slot.measured = value, True
        moves: list[Move] = []
        for _ in range(s.max_moves):
            move = self._best_move()
            if move is None:
                break
            slot = self._slots[move.name]
            slot.cpus = (move.cpu_to,)
            slot.age = 0
            moves.append(move)
        return moves

    def _best_move(self) -> Move | None:
        s = self.settings
        loads = self.loads()
        src = max(self.cpus, key=lambda c: (loads[c], -c))
        dst = min(self.cpus, key=lambda c: (loads[c], c))
        if src == dst or loads[src] <= s.contended:
            return None
        best: tuple[float, str] | None = None
        for name, slot in self._slots.items():
            if slot.pinned or slot.cpus != (src,) or slot.age < s.cooldown:
                continue
            if not slot.measured or slot.load < s.busy:
                continue
            after = max(loads[src] - slot.load, loads[dst] + slot.load)
            if after > loads[src] - s.margin:
                continue
            if best is None or after < best[0] or (after == best[0] and name < best[1]):
                best = (after, name)
        if best is None:
            return None
        name = best[1]
        return Move(name, src, dst, self._slots[name].load, loads[src], loads[dst])
