"""When WARDEN_HOME runs low on space: which guests to pause, and when to resume them (pure).

A guest's disk is a sparse COW file in WARDEN_HOME. When the filesystem is full, UML's ubd gets
ENOSPC on a write, the guest sees an I/O error, and its ext4 aborts the journal and stays
read-only until a reboot (docs/decisions/2026-12-07-fault-campaign.md, finding 7). So warden
keeps a floor of free space: below it, the guests whose COW grows are frozen (fastest first,
as many as it takes for the rest to leave half of the floor untouched for HORIZON seconds;
above it already when the measured rates would cross it before the next reading) before the
disk is full, and thawed when the space comes back above the floor plus a margin
(the hysteresis, so that a guest at the edge is not paused and resumed on every reading).
Guests that do not write their disk keep running.

Sans-io: the driver (storage/feature.py) reads statvfs and each COW's allocated blocks and
feeds `Reading`s; `Watch.step` answers what to pause, what to resume and when to look again.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_FLOOR = 1 << 30
DEFAULT_PERCENT = 2.0
# Without a setting, the floor is at most 1/8 of the filesystem: 1 GiB on a 4 GiB home would
# pause a guest after it wrote 3 GiB and leave a quarter of the disk unused.
DEFAULT_SHARE = 8
# The space that must come back above the floor before paused guests are resumed.
HYSTERESIS_SHARE = 4  # floor/4
FAST = 0.25  # seconds between readings when space is low, or a guest is held
SLOW = 2.0  # at most, when there is plenty
LOW_BAND = 3  # "low": free below 3 x floor
# Below the floor, the guests that keep running may together write at most the room left above
# the reserve (floor/2) in HORIZON seconds: a guest trickling a few KiB/s (its shell history, a
# log) keeps running while a fast writer is paused; below the reserve every growing guest is.
RESERVE_SHARE = 2
HORIZON = 10.0
# A guest paused again within BACKOFF_RESET seconds of its resume (it writes on at the edge)
# waits twice as long as the last time before its next resume, up to BACKOFF_MAX: at most a
# pause and a resume every 8 s, not four events a second, while it keeps writing at the floor.
BACKOFF_RESET = 10.0
BACKOFF_MAX = 8.0
# Between two readings a guest may write `rate x interval`: the interval is chosen so that the
# measured rates need at least this many intervals to use the room left above the floor.
INTERVALS_OF_ROOM = 4
# Rates are only known once a guest writes: one that starts at full speed right after a quiet
# reading must not reach the reserve before the next. WORST_RATE is how fast a guest can fill
# its COW: 220 MB/s measured here (dd to a minimal guest's root filesystem, an ext4 home on a
# loop device), twice that. The watch looks again before it could use half of the room above
# the reserve: within 2 GiB of the reserve (4 x WORST_RATE x SLOW) it reads more often than
# every SLOW seconds.
WORST_RATE = 512 << 20
MIN_WAIT = 0.05


@dataclass(frozen=True)
class FloorSetting:
    """The fleet's [host] home_floor (bytes) and home_floor_percent (of the filesystem)."""

    bytes: int = 0
    percent: float = 0.0

    def floor(self, fs_size: int) -> int:
        """Free bytes to keep on a filesystem of `fs_size` bytes."""
        if not self.bytes and not self.percent:
            return min(max(DEFAULT_FLOOR, int(fs_size * DEFAULT_PERCENT / 100)), fs_size // 8)
        return max(self.bytes, int(fs_size * self.percent / 100))

    def problem(self, fs_size: int, log_floor: int) -> str | None:
        """Why this setting cannot work on a filesystem of `fs_size` bytes whose session logs
        stop at `log_floor` free bytes; None if it can."""
        floor = self.floor(fs_size)
        if floor * 2 > fs_size:
            return (
                f"the floor ({floor} bytes) is more than half of WARDEN_HOME's filesystem "
                f"({fs_size} bytes): guests could write almost nothing; lower home_floor or "
                "home_floor_percent"
            )
        if floor <= log_floor:
            return (
                f"the floor ({floor} bytes) is not above the session logs' floor ({log_floor} "
                "bytes): the logs must stop only after the guests' disks are paused; raise "
                "home_floor or home_floor_percent"
            )
        return None


@dataclass(frozen=True)
class Reading:
    """One look at WARDEN_HOME: its filesystem's free and total bytes (statvfs), the allocated
    bytes of the COW file of each running guest and each guest this watch holds paused (so that
    a resumed guest's growth is measured from its first reading on), and which are held."""

    now: float
    free: int
    size: int
    cows: Mapping[str, int]
    held: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    pause: tuple[str, ...]  # fastest first
    resume: tuple[str, ...]
    wait: float  # seconds until the next reading
    floor: int
    resume_at: int
    rates: Mapping[str, float] = field(default_factory=dict)  # bytes/s of the COWs that grew


@dataclass
class Watch:
    setting: FloorSetting = field(default_factory=FloorSetting)
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)
    _resumed: dict[str, float] = field(default_factory=dict)  # when it was last resumed
    _hold: dict[str, tuple[float, float]] = field(default_factory=dict)  # paused at, backoff

    def step(self, r: Reading) -> Decision:
        floor = self.setting.floor(r.size)
        resume_at = floor + floor // HYSTERESIS_SHARE
        rates: dict[str, float] = {}
        for name, cow in r.cows.items():
            last = self._last.get(name)
            if name not in r.held and last and cow > last[1] and r.now > last[0]:
                rates[name] = (cow - last[1]) / (r.now - last[0])
        # A held guest writes nothing; one that is gone (stopped, destroyed) is forgotten.
        self._last = {n: (r.now, c) for n, c in r.cows.items()}
        growing = sorted(rates, key=lambda n: -rates[n])
        pause: list[str] = []
        if r.free < floor:
            # Fastest first, until the rest could not reach the reserve within HORIZON.
            budget = r.free - floor // RESERVE_SHARE
            left = sum(rates.values())
            for name in growing:
                if budget > 0 and left * HORIZON <= budget:
                    break
                pause.append(name)
                left -= rates[name]
        else:
            # Above the floor, but the measured rates would cross it before the next reading:
            # pause the fastest until the rest would not.
            projected = r.free - sum(rates.values()) * FAST
            for name in growing:
                if projected >= floor:
                    break
                pause.append(name)
                projected += rates[name] * FAST
        for name in pause:
            again = r.now - self._resumed.get(name, -BACKOFF_RESET) < BACKOFF_RESET
            before = self._hold.get(name, (0.0, 0.0))[1]
            backoff = min(BACKOFF_MAX, max(FAST * 2, before * 2)) if again else 0.0
            self._hold[name] = (r.now, backoff)
        resume: list[str] = []
        if r.free >= resume_at and not pause:
            for name in sorted(r.held):
                since, backoff = self._hold.get(name, (0.0, 0.0))
                if r.now - since >= backoff:
                    resume.append(name)
                    self._resumed[name] = r.now
        # A guest that ran BACKOFF_RESET seconds since its resume starts again from no back-off.
        for name, at in list(self._resumed.items()):
            if r.now - at >= BACKOFF_RESET and name not in r.held and name not in pause:
                del self._resumed[name]
                self._hold.pop(name, None)
        return Decision(
            tuple(pause), tuple(resume), self._wait(r, floor, rates), floor, resume_at, rates
        )

    def _wait(self, r: Reading, floor: int, rates: Mapping[str, float]) -> float:
        unseen = max(0, r.free - floor // RESERVE_SHARE) / (2 * WORST_RATE)
        total = sum(rates.values())
        if r.free < floor * LOW_BAND or r.held:
            seen = FAST
        elif total <= 0:
            seen = SLOW
        else:
            seen = min(SLOW, max(FAST, (r.free - floor) / (total * INTERVALS_OF_ROOM)))
        return max(MIN_WAIT, min(seen, unseen))
