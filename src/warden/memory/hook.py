"""The guest kernel's OOM hook (kernel/0004-memory-oom-plug.patch), as the host reads it.

Pure: mconsole reply text and notify bytes in, values out (docs/formats/mconsole.md,
"Memory"). Three things come from a kernel with the hook:

    `oomplug [+SIZE|-SIZE|deny]`  answers its counters (every form, after acting)
    `config mem=±N`               answers `done=KiB unplugged=KiB` (stock kernels: nothing)
    a MEMORY notify               `oom credit=KiB unplugged=KiB plugged=KiB waiting=0|1`

A notify is only a hint: guest root cannot forge one through /proc/mconsole (that sends
USER_NOTIFY), but a guest kernel is not a trust boundary against its own root (modules,
/dev/mem), so the host wakes up on a hint and then asks `oomplug` itself, at its own pace.
"""

from dataclasses import dataclass

from warden.errors import WardenError

KIB = 1024
MAX_TEXT = 512  # one mconsole datagram
COUNTERS = (
    "credit",
    "unplugged",
    "plugged",
    "events",
    "waits",
    "timeouts",
    "denials",
    "waiting",
    "last_us",
    "max_us",
    "sum_us",
)
SIZES = ("credit", "unplugged", "plugged")  # KiB on the wire, bytes here


class HookError(WardenError):
    """A reply that claims to come from the OOM hook and does not parse."""


@dataclass(frozen=True)
class Counters:
    """`oomplug`'s answer. Sizes in bytes; `plugged` counts up from the boot."""

    credit: int  # what the guest may still plug back by itself
    unplugged: int  # what the host holds (boot size - plugged)
    plugged: int  # what the hook plugged back since the boot
    events: int  # OOM calls that plugged something back
    waits: int  # OOM calls that had to wait for a grant
    timeouts: int  # waits that ended without one (the guest's OOM killer ran)
    denials: int  # waits the host ended with `oomplug deny`
    waiting: bool  # an OOM call is waiting for a grant right now
    last_us: int  # latency of the last plug back (notifier entry to return)
    max_us: int
    sum_us: int

    @property
    def mean_us(self) -> float:
        return self.sum_us / self.events if self.events else 0.0


def _fields(text: str, what: str) -> dict[str, int]:
    if len(text) > MAX_TEXT:
        raise HookError(f"{what}: {len(text)} characters, more than one mconsole datagram")
    out: dict[str, int] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not value.isdigit() or len(value) > 20:
            raise HookError(f"{what}: {token[:40]!r} is not KEY=NUMBER in {text[:120]!r}")
        out[key] = int(value)
    return out


def parse_counters(text: str) -> Counters:
    raw = _fields(text, "oomplug reply")
    missing = [k for k in COUNTERS if k not in raw]
    if missing:
        raise HookError(f"oomplug reply lacks {', '.join(missing)}: {text[:120]!r}")
    values = {k: raw[k] * KIB if k in SIZES else raw[k] for k in COUNTERS}
    return Counters(**{**values, "waiting": bool(values["waiting"])})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Done:
    """What a `config mem=±N` of a kernel with the hook did (bytes)."""

    done: int
    unplugged: int


def parse_done(text: str) -> Done | None:
    """The answer to `config mem=±N`; None for a stock kernel's empty success."""
    if not text.strip():
        return None
    raw = _fields(text, "config mem reply")
    if "done" not in raw or "unplugged" not in raw:
        raise HookError(f"config mem reply lacks done= or unplugged=: {text[:120]!r}")
    return Done(done=raw["done"] * KIB, unplugged=raw["unplugged"] * KIB)


def hint_waiting(data: bytes) -> bool:
    """Whether a MEMORY notify says an OOM call waits (anything unparsable: say it does,
    which only makes the host look sooner)."""
    text = data[:MAX_TEXT].split(b"\0", 1)[0].decode("ascii", "replace")
    return "waiting=0" not in text.split()
