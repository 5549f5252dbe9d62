"""Which guest of a pool each attacker address gets, and when guests start and recycle (pure).

One `PoolPolicy` per `[[pool]]` (warden.spec.pool). Observations in, with the host's monotonic
time; a list of commands out, which the driver (warden.forensics.pooldriver) carries out and
whose outcomes it reports back as further observations. Nothing here does I/O.

The kernel hands out warm guests by itself (docs/decisions/2026-12-07-pools.md): the gate's
nftables rules offer each warm guest in a map of one element, and the first SYN of a new
address claims the first free one, with no process in its path. This policy decides which
guests are offered, learns of claims afterwards, and handles the rest.

Observations
    claimed(src, guest) the kernel gave the offered guest `guest` to the new address `src`
    waiting(src)        a new address found no warm guest: its SYN was dropped (its own
                        retransmission comes back within seconds)
    ready(guest)        the guest's service answers on the pool's port
    failed(guest)       the guest did not start, or died: not used again before RETRY_AFTER
    seen(srcs)          these addresses sent packets recently (activity)
    confirmed(srcs)     these addresses completed a TCP handshake with their guest (the
                        kernel's conntrack marked a connection of theirs ASSURED)
    tick()              once a second: waits that ran out, idle guests, the refill

Commands
    Start(guest)        boot a stopped guest, pristine
    Recycle(guest)      evidence kept, disk dropped, booted pristine (forensics' recycle)
    Offer(guests)       the warm guests the kernel may hand out, in this order (the whole list)
    Map(src, guest)     give `src` the guest now (a waiting address: its next SYN gets through)
    Unmap(src, guest)   take the guest from `src` (its next new connection is new again)
    Forget(src)         a waiting address waited longer than the pool's `wait`

The rules:
- An address keeps its guest until the guest is recycled; a guest is never given to a second
  address while it lives (the kernel's maps hold one element each).
- A new address takes a warm guest at once (in the kernel). With none warm, the pool boots one
  for it if a stopped guest is left, and the address waits, in arrival order, up to `wait`
  seconds: the first guest to become warm is mapped to it, so its next retransmitted SYN goes
  through. After `wait` it is forgotten (a later SYN starts a new wait). At most MAX_WAITING
  addresses wait at once: a flood of spoofed addresses cannot boot the pool empty for nothing
  more than the addresses bound it.
- A guest whose address sent nothing for `idle` seconds is recycled, and comes back warm.
- A claim must be confirmed: an address that has not completed a TCP handshake with its guest
  `claim_timeout` seconds after the claim (its SYN may have been spoofed: nobody there gets
  the guest's SYN-ACK) loses the guest, which goes back to the warm guests WITHOUT a recycle:
  it received a SYN and answered a SYN-ACK, which no process saw (sshd's accept() returns only
  after a completed handshake), so nothing in it changed but a request socket its kernel drops
  by itself. A waiting address mapped to a guest gets longer: its next SYN retransmission
  comes at most (time waited so far) + 1 s later (Linux: 1, 3, 7, 15 s after the first
  before 6.7; 1, 2, 3, 4, 5, 7, 11, 19 s since, with tcp_syn_linear_timeouts = 4).
  So a flood of spoofed SYNs holds each warm guest for `claim_timeout`, not `idle`.
- At most UNCONFIRMED_PER_NET claims from one /24 await their handshake at once; a further
  claim from that /24 is taken back at once (a spoofer inside its own provider's prefix, where
  BCP 38 filtering lets it forge only neighbours' addresses, holds that many guests at most).
- Two SYNs of one new address on two CPUs may claim two guests: the second is taken back.
- The refill keeps `size` guests warm or booting, plus one per waiting address, while stopped
  guests are left.
"""

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_WAITING = 64
RETRY_AFTER = 30.0
UNCONFIRMED_PER_NET = 2


def _net(src: str) -> str:
    """The /24 of an IPv4 address (the gate checked it)."""
    return src.rsplit(".", 1)[0] + ".0/24"


class Slot(enum.Enum):
    OFF = "off"  # stopped (or failed: see retry_at)
    BOOTING = "booting"  # started or being recycled; not answering yet
    WARM = "warm"  # answering, offered, nobody's
    TAKEN = "taken"  # an address's


@dataclass(frozen=True)
class Start:
    guest: str


@dataclass(frozen=True)
class Recycle:
    guest: str
    reason: str


@dataclass(frozen=True)
class Offer:
    guests: tuple[str, ...]


@dataclass(frozen=True)
class Map:
    src: str
    guest: str


@dataclass(frozen=True)
class Unmap:
    src: str
    guest: str


@dataclass(frozen=True)
class Forget:
    src: str


@dataclass(frozen=True)
class Release:
    """Take the guest from `src`, which never completed a handshake (unmapped like Unmap); the
    guest stays warm, unrecycled (the module's docstring says why it is still pristine)."""

    src: str
    guest: str
    reason: str


Command = Start | Recycle | Offer | Map | Unmap | Forget | Release


@dataclass
class _Guest:
    slot: Slot = Slot.OFF
    src: str | None = None
    last_seen: float = 0.0
    retry_at: float = 0.0
    confirm_by: float | None = None  # taken, no handshake seen yet: released after this time


@dataclass
class PoolPolicy:
    guests: list[str]
    size: int
    idle: float
    wait: float
    claim_timeout: float = 5.0
    state: dict[str, _Guest] = field(default_factory=dict)
    by_src: dict[str, str] = field(default_factory=dict)
    waiting: "OrderedDict[str, float]" = field(default_factory=OrderedDict)  # src -> deadline
    offered: tuple[str, ...] = ()

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

    def src_of(self, guest: str) -> str | None:
        return self.state[guest].src

    # ---- observations ------------------------------------------------------------------------
    def adopt(self, running: set[str], now: float) -> list["Command"]:
        """At daemon start: guests already running outlived the previous daemon, which knew
        who had them; each is recycled before anyone gets it."""
        out: list[Command] = []
        for name in self.guests:
            if name in running:
                self.state[name].slot = Slot.BOOTING
                out.append(Recycle(name, "pool: running when the daemon started"))
        return self._done(out + self._refill(now))

    def claimed(self, src: str, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        if g.slot is Slot.TAKEN and g.src == src:
            return []  # reported twice
        if g.slot is not Slot.WARM:
            # Not offered (any more): only a stale rule could do it. Take it back and let the
            # guest be recycled: whoever reached it may have touched it.
            return self._done(
                [Unmap(src, guest), Recycle(guest, f"pool: claimed by {src} unoffered")]
            )
        if src in self.by_src:  # two SYNs of one address claimed two guests: give one back
            return self._done([Unmap(src, guest)])
        if self._unconfirmed_in(_net(src)) >= UNCONFIRMED_PER_NET:
            return self._done(
                [Release(src, guest, f"pool: {_net(src)} has {UNCONFIRMED_PER_NET} unconfirmed")]
            )
        self.waiting.pop(src, None)
        self._take(guest, src, now, now + self.claim_timeout)
        return self._done(self._refill(now))

    def waiting_src(self, src: str, now: float) -> list[Command]:
        if src in self.waiting or src in self.by_src:
            return []
        if len(self.waiting) >= MAX_WAITING or self.wait <= 0:
            return []  # its SYN was dropped; nothing is reserved for it
        self.waiting[src] = now + self.wait
        return self._done(self._refill(now))

    def ready(self, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        if g.slot is not Slot.BOOTING:
            return []
        g.slot = Slot.WARM
        out: list[Command] = []
        out = self._to_waiter(guest, now)
        return self._done(out)

    def failed(self, guest: str, now: float) -> list[Command]:
        g = self.state[guest]
        out: list[Command] = []
        if g.src is not None:
            out.append(Unmap(g.src, guest))
            self.by_src.pop(g.src, None)
        g.slot, g.src, g.retry_at = Slot.OFF, None, now + RETRY_AFTER
        return self._done(out + self._refill(now))

    def seen(self, srcs: set[str], now: float) -> None:
        for src in srcs:
            guest = self.by_src.get(src)
            if guest is not None:
                self.state[guest].last_seen = now

    def confirmed(self, srcs: set[str], now: float) -> None:
        """`srcs` completed a handshake (reported at every poll while they keep a guest: not
        activity, which `seen` reports)."""
        for src in srcs:
            guest = self.by_src.get(src)
            if guest is not None:
                self.state[guest].confirm_by = None

    def tick(self, now: float) -> list[Command]:
        out: list[Command] = []
        for src, deadline in list(self.waiting.items()):
            if now > deadline:
                del self.waiting[src]
                out.append(Forget(src))
        for name, g in self.state.items():
            if g.slot is Slot.TAKEN and g.src is not None and g.confirm_by is not None:
                if now > g.confirm_by:
                    src = g.src
                    self.by_src.pop(src, None)
                    g.slot, g.src, g.confirm_by = Slot.WARM, None, None
                    out.append(Release(src, name, f"pool: {src} sent no handshake"))
                    out += self._to_waiter(name, now)
                continue
            if g.slot is Slot.TAKEN and g.src is not None and now - g.last_seen >= self.idle:
                out.append(Unmap(g.src, name))
                out.append(Recycle(name, f"pool: {g.src} idle {now - g.last_seen:.0f}s"))
                self.by_src.pop(g.src, None)
                g.slot, g.src = Slot.BOOTING, None
        return self._done(out + self._refill(now))

    # ---- inside ------------------------------------------------------------------------------
    def _take(self, guest: str, src: str, now: float, confirm_by: float) -> None:
        g = self.state[guest]
        g.slot, g.src, g.last_seen, g.confirm_by = Slot.TAKEN, src, now, confirm_by
        self.by_src[src] = guest

    def _to_waiter(self, guest: str, now: float) -> list[Command]:
        """The warm `guest` to the longest-waiting address still within its wait."""
        out: list[Command] = []
        while self.waiting:
            src, deadline = self.waiting.popitem(last=False)
            if deadline >= now:
                # Its client retransmits its SYN at most (time waited) + 1 s from now.
                waited = max(0.0, now - (deadline - self.wait))
                self._take(guest, src, now, now + waited + 1.0 + self.claim_timeout)
                out.append(Map(src, guest))
                break
            out.append(Forget(src))
        return out

    def _unconfirmed_in(self, net: str) -> int:
        return sum(
            1
            for g in self.state.values()
            if g.slot is Slot.TAKEN and g.confirm_by is not None and g.src and _net(g.src) == net
        )

    def _first(self, slot: Slot, now: float) -> str | None:
        for name in self.guests:
            g = self.state[name]
            if g.slot is slot and g.retry_at <= now:
                return name
        return None

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

    def _done(self, out: list[Command]) -> list[Command]:
        """`out`, and an Offer when the warm guests changed (after the Maps and Unmaps, so a
        guest mapped to a waiting address is never offered)."""
        warm = tuple(n for n in self.guests if self.state[n].slot is Slot.WARM)
        if warm != self.offered:
            self.offered = warm
            out.append(Offer(warm))
        return out
