"""Budgets for what guests send: token buckets, burst tallies and per-guest event gates.

Everything a guest kernel writes reaches the daemon at the guest's pace, not the daemon's: a
loop writing /proc/mconsole sends thousands of notify datagrams a second, and a guest that
loaded a module controls its kernel and so every byte of its mconsole replies, tty log and
disguise requests (docs/security.md, "Guest channels"). Each such channel gets a per-guest
budget made of the pieces here; what goes over it is dropped and *counted*, and the count is
reported as one event per burst, never stored item by item.

- `Bucket`: a token bucket (a rate and a burst). `take` says whether an item fits now.
- `Tally`: what one channel refused during a burst (by reason, with bytes), reported once the
  burst's window has passed: one event per window however long the flood.
- `EventGate`: at most so many events of one guest a minute, whatever their kind; what it holds
  back is counted by kind and reported in one `events-suppressed` event.

Sans-io: every method takes `now` (seconds on a monotonic clock) and does no I/O, so each policy
is tested with scripted inputs (tests/test_hostile_channels.py). The limits each channel uses
are the constants at the end, in one place, and docs/security.md lists them.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Bucket:
    """`rate` tokens a second, at most `burst` saved up; full at first use."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.stamp is None:
            self.tokens = self.burst
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None else max(self.stamp, now)

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take `n` tokens if they are there; False (and nothing taken) if not."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def available(self, now: float) -> int:
        """Whole tokens there now."""
        self._refill(now)
        return int(self.tokens)

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds until `n` tokens (at most a burst) are there; 0 if they are now."""
        self._refill(now)
        return max(0.0, (min(n, self.burst) - self.tokens) / self.rate)


def _thousands(n: int) -> str:
    return f"{n:,}"


@dataclass
class Tally:
    """What one channel of one guest refused during a burst, for one report.

    A burst starts with the first refusal; `due(now)` returns the report once `window` seconds
    have passed since then (and starts afresh), `flush(now)` at once (the channel closes). A
    report says how many items and bytes, why (counts by reason) and one example problem."""

    kind: str  # the event's kind, e.g. "notify-flood"
    unit: str  # what is counted, e.g. "datagrams"
    window: float = 10.0
    reasons: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    since: float | None = None
    example: str = ""
    total: int = 0  # every item refused since the channel opened

    def add(self, now: float, reason: str, nbytes: int = 0, example: str = "") -> None:
        if self.since is None:
            self.since = now
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.nbytes += nbytes
        self.total += 1
        if example and not self.example:
            self.example = example[:200]

    @property
    def pending(self) -> bool:
        return self.since is not None

    def deadline(self) -> float | None:
        return None if self.since is None else self.since + self.window

    def due(self, now: float) -> dict[str, Any] | None:
        if self.since is None or now < self.since + self.window:
            return None
        return self.flush(now)

    def flush(self, now: float) -> dict[str, Any] | None:
        if self.since is None:
            return None
        dropped = sum(self.reasons.values())
        seconds = round(max(0.0, now - self.since), 1)
        report: dict[str, Any] = {
            "dropped": dropped,
            "unit": self.unit,
            "bytes": self.nbytes,
            "seconds": seconds,
            "reasons": dict(sorted(self.reasons.items())),
            "summary": f"{_thousands(dropped)} {self.unit} dropped in {seconds} s",
        }
        if self.example:
            report["example"] = self.example
        self.reasons, self.nbytes, self.since, self.example = {}, 0, None, ""
        return report


@dataclass
class Budget:
    """Items and bytes of one channel of one guest: both must fit, or the item is refused and
    counted in `tally` as `over-rate`."""

    items: Bucket
    bytes: Bucket | None
    tally: Tally

    def admit(self, now: float, nbytes: int = 0) -> bool:
        if self.bytes is not None and self.bytes.available(now) < nbytes:
            self.tally.add(now, "over-byte-budget", nbytes)
            return False
        if not self.items.take(now):
            self.tally.add(now, "over-rate", nbytes)
            return False
        if self.bytes is not None:
            self.bytes.take(now, nbytes)
        return True

    def refuse(self, now: float, reason: str, nbytes: int = 0, example: str = "") -> None:
        self.tally.add(now, reason, nbytes, example)


@dataclass
class EventGate:
    """At most `burst` events of one guest at once and `per_minute` a minute after that.

    What it holds back is counted by kind; `due(now)` gives one report of it per `window`
    (which passes the gate: at most one a window)."""

    per_minute: float = 30.0
    burst: float = 30.0
    window: float = 60.0
    bucket: Bucket = field(init=False)
    held: dict[str, int] = field(default_factory=dict)
    since: float | None = None

    def __post_init__(self) -> None:
        self.bucket = Bucket(self.per_minute / 60.0, self.burst)

    def admit(self, now: float, kind: str) -> bool:
        if self.bucket.take(now):
            return True
        if self.since is None:
            self.since = now
        self.held[kind] = self.held.get(kind, 0) + 1
        return False

    def deadline(self) -> float | None:
        return None if self.since is None else self.since + self.window

    def due(self, now: float, force: bool = False) -> dict[str, Any] | None:
        if self.since is None or (not force and now < self.since + self.window):
            return None
        n = sum(self.held.values())
        seconds = round(max(0.0, now - self.since), 1)
        report: dict[str, Any] = {
            "suppressed": n,
            "kinds": dict(sorted(self.held.items())),
            "seconds": seconds,
            "summary": f"{_thousands(n)} events of this guest not stored in {seconds} s "
            f"(more than {self.per_minute:g} a minute)",
        }
        self.held, self.since = {}, None
        return report


# ---- the limits of each channel, per guest (docs/security.md, "Guest channels") -----------------

# Events a guest can cause (notifications, flood reports, tty-log losses): per guest.
EVENTS_PER_MINUTE = 30.0
EVENTS_BURST = 30.0

# The mconsole notify socket. Datagrams are taken off the socket at most NOTIFY_READ_RATE a
# second: beyond that the daemon stops reading for a moment and the guest's kernel, whose
# notify socket blocks, waits (net.unix.max_dgram_qlen datagrams queue): a flood slows the guest
# that sends it, not the daemon. Of what is read, control notifications (SOCKET, PANIC, HANG)
# are acted on at NOTIFY_CONTROL_RATE; USER_NOTIFY text (what guest root writes to
# /proc/mconsole) is stored as an event at NOTIFY_USER_RATE and within a byte budget.
NOTIFY_READ_RATE = 5000.0
NOTIFY_READ_BURST = 5000.0
NOTIFY_BATCH = 64  # datagrams per wake-up of the loop
NOTIFY_CONTROL_RATE = 1.0  # a reboot takes longer than a second
NOTIFY_CONTROL_BURST = 5.0
NOTIFY_USER_RATE = 1.0
NOTIFY_USER_BURST = 10.0
NOTIFY_USER_BYTES = 512.0  # a second; one notification holds at most 512
NOTIFY_USER_BYTES_BURST = 4096.0
FLOOD_WINDOW = 10.0  # seconds one flood report covers

# Disguise filter requests (honeypot kernel): answered at DISGUISE_RATE a second within a
# byte budget of real content; at most DISGUISE_INFLIGHT at once, of which DISGUISE_PROGRAMS
# run a filter program. A request over budget is not answered: the kernel serves the entry's
# fallback at its timeout, so only the guest's own reading process waits.
DISGUISE_RATE = 200.0
DISGUISE_BURST = 200.0
DISGUISE_BYTES = 8.0 * 2**20
DISGUISE_BYTES_BURST = 8.0 * 2**20
DISGUISE_INFLIGHT = 8
DISGUISE_PROGRAMS = 2
DISGUISE_BATCH = 64  # messages per wake-up


@dataclass
class NotifyBudget:
    """The notify socket of one guest: what is read, what is acted on, what is stored; one
    tally of what was dropped (`notify-flood`)."""

    read: Bucket
    control: Budget
    user: Budget

    @property
    def tally(self) -> Tally:
        return self.control.tally


def notify_budget() -> NotifyBudget:
    tally = Tally("notify-flood", "datagrams", FLOOD_WINDOW)
    return NotifyBudget(
        read=Bucket(NOTIFY_READ_RATE, NOTIFY_READ_BURST),
        control=Budget(Bucket(NOTIFY_CONTROL_RATE, NOTIFY_CONTROL_BURST), None, tally),
        user=Budget(
            Bucket(NOTIFY_USER_RATE, NOTIFY_USER_BURST),
            Bucket(NOTIFY_USER_BYTES, NOTIFY_USER_BYTES_BURST),
            tally,
        ),
    )


def disguise_requests() -> Budget:
    return Budget(
        Bucket(DISGUISE_RATE, DISGUISE_BURST),
        Bucket(DISGUISE_BYTES, DISGUISE_BYTES_BURST),
        Tally("disguise-flood", "requests", FLOOD_WINDOW),
    )


def event_gate() -> EventGate:
    return EventGate(EVENTS_PER_MINUTE, EVENTS_BURST)
