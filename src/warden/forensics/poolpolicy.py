"""Which guest of a pool each attacker address gets, and when guests start and recycle (pure).

One `PoolPolicy` per `[[pool]]` (warden.spec.pool). Observations in, with the host's monotonic
time; a list of commands out, which the driver (warden.forensics.pooldriver) carries out and
whose outcomes it reports back as further observations. Nothing here does I/O.

Observations
    arrival(src)        a packet of a new connection from `src` reached the gate (the first
                        SYN, or a retransmission while it waits): it is held until a verdict
    ready(guest)        the guest's service answers on the pool's port (warm)
    failed(guest)       the guest did not start, or died: not usable until RETRY_AFTER
    seen(srcs)          these addresses sent packets since the last report (activity)
    tick()              once a second: waits that ran out, idle guests, the refill

Commands
    Start(guest)        boot a stopped guest (pristine: the pool resets what it starts)
    Recycle(guest)      evidence kept, disk dropped, booted pristine (forensics' recycle)
    Map(src, guest)     route `src` to `guest` (the kernel's DNAT map), then
    Accept(src)         let the held packets of `src` go on (to the map just written)
    Drop(src)           drop the held packets of `src`: no guest within the pool's `wait`
    Unmap(src)          `src` has no guest any more: its next new connection is an arrival

The rules (docs/decisions/2026-12-07-pools.md):
- An address keeps its guest until that guest is recycled; the same guest is never given to
  a second address while it lives (a guest one attacker touched is never another's).
- A new address takes a warm guest at once. With none warm it waits, up to `wait`, in
  arrival order, for the next guest to become warm; the pool boots one for it if a stopped
  guest is left. When the wait ends without a guest its packets are dropped (the client's own
  retransmission is the next try). At most MAX_WAITING addresses wait at once: more are
  dropped at once (a flood of spoofed addresses cannot queue without bound).
- A guest whose address sent nothing for `idle` seconds is recycled, and comes back warm.
- The refill keeps `size` guests warm or booting, plus one for each waiting address, as long
  as stopped guests are left: the addresses bound the pool.
"""

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_WAITING = 64
RETRY_AFTER = 30.0


class Slot(enum.Enum):
    OFF = "off"  # stopped (or failed: see retry_at)
    BOOTING = "booting"  # started or being recycled; not answering yet
    WARM = "warm"  # answering, nobody's
    TAKEN = "taken"  # an address's


@dataclass(frozen=True)
class Start:
    guest: str


@dataclass(frozen=True)
class Recycle:
    guest: str
    reason: str


@dataclass(frozen=True)
class Map:
    src: str
    guest: str


@dataclass(frozen=True)
class Unmap:
    src: str


@dataclass(frozen=True)
class Accept:
    src: str


@dataclass(frozen=True)
class Drop:
    src: str
    reason: str


Command = Start | Recycle | Map | Unmap | Accept | Drop


@dataclass
class _Guest:
    slot: Slot = Slot.OFF
    src: str | None = None
    last_seen: float = 0.0
    retry_at: float = 0.0


@dataclass
class PoolPolicy:
    guests: list[str]
    size: int
    idle: float
    wait: float
    state: dict[str, _Guest] = field(default_factory=dict)
    by_src: dict[str, str] = field(default_factory=dict)
    waiting: "OrderedDict[str, float]" = field(default_factory=OrderedDict)  # src -> deadline

    def __post_init__(self) -> None:
        for g in self.guests:
            self.state.setdefault(g, _Guest())

    # ---- what the driver reads -------------------------------------------------------------
    def slot(self, guest: str) -> Slot:
        return self.state[guest].slot

    def count(self, slot: Slot) -> int:
        return sum(1 for g in self.state.values() if g.slot is slot)

    def guest_of(self, src: str) -> str | None:
        return self.by_src.get(src)

    # ---- observations ------------------------------------------------------------------------
    def adopt(self, running: set[str], now: float) -> list[Command]:
        """At daemon start: guests already running outlived the previous daemon, which knew
        who had them; each is recycled before anyone gets it."""
        out: list[Command] = []
        for name in self.guests:
            if name in running:
                self.state[name].slot = Slot.BOOTING
                out.append(Recycle(name, "pool: running when the daemon started"))
        return out + self.tick(now)

    def arrival(self, src: str, now: float) -> list[Command]:
        guest = self.by_src.get(src)
        if guest is not None:  # mapped meanwhile (a packet queued before the map was written)
            return [Accept(src)]
        if src in self.waiting:
            return []  # a retransmission: held with the first
        warm = self._first(Slot.WARM)
        if warm is not None:
            return self._assign(src, warm, now)
        if self.wait <= 0:
            return [Drop(src, "no warm guest and the pool's wait is 0")]
        if len(self.waiting) >= MAX_WAITING:
            return [Drop(src, f"{MAX_WAITING} addresses wait already")]
        self.waiting[src] = now + self.wait
        return self._refill(now)

    def ready(self, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        if g.slot is not Slot.BOOTING:
            return []
        g.slot = Slot.WARM
        out: list[Command] = []
        while self.waiting:
            src, deadline = self.waiting.popitem(last=False)
            if deadline >= now:
                return out + self._assign(src, guest, now)
            out.append(Drop(src, "no guest within the pool's wait"))
        return out

    def failed(self, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        out: list[Command] = []
        if g.src is not None:
            out.append(Unmap(g.src))
            self.by_src.pop(g.src, None)
        g.slot, g.src, g.retry_at = Slot.OFF, None, now + RETRY_AFTER
        return out + self._refill(now)

    def seen(self, srcs: set[str], now: float) -> None:
        for src in srcs:
            guest = self.by_src.get(src)
            if guest is not None:
                self.state[guest].last_seen = now

    def tick(self, now: float) -> list[Command]:
        out: list[Command] = []
        for src, deadline in list(self.waiting.items()):
            if now > deadline:
                del self.waiting[src]
                out.append(Drop(src, "no guest within the pool's wait"))
        for name, g in self.state.items():
            if g.slot is Slot.TAKEN and g.src is not None and now - g.last_seen >= self.idle:
                out.append(Unmap(g.src))
                out.append(Recycle(name, f"pool: {g.src} idle {now - g.last_seen:.0f}s"))
                self.by_src.pop(g.src, None)
                g.slot, g.src = Slot.BOOTING, None
        return out + self._refill(now)

    # ---- inside ------------------------------------------------------------------------------
    def _first(self, slot: Slot, now: float | None = None) -> str | None:
        for name in self.guests:
            g = self.state[name]
            if g.slot is slot and (now is None or g.retry_at <= now):
                return name
        return None

    def _assign(self, src: str, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        g.slot, g.src, g.last_seen = Slot.TAKEN, src, now
        self.by_src[src] = guest
        out: list[Command] = [Map(src, guest), Accept(src)]
        return out + self._refill(now)

    def _refill(self, now: float) -> list[Command]:
        want = self.size + len(self.waiting) - self.count(Slot.WARM) - self.count(Slot.BOOTING)
        out: list[Command] = []
        while want > 0:
            off = self._first(Slot.OFF, now)
            if off is None:
                break
            self.state[off].slot = Slot.BOOTING
            out.append(Start(off))
            want -= 1
        return out
