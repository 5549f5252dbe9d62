"""The fleet key `recycle`: when a honeypot guest goes back to pristine on its own.

    recycle = "on-logout"        when the guest's last session ends (below), after a grace
    recycle = "idle:DURATION"    when nobody did anything in it for DURATION
    recycle = "every:DURATION"   each time a boot has run for DURATION

DURATION is a sum of whole numbers with units s, m, h, d: "90s", "15m", "1h30m", "2d".
Each recycle keeps the boot's evidence (docs/formats/evidence.md) before the disk is dropped.
What "a session" and "did something" mean is decided in warden.forensics.recycle (the pure
policy) and written down in docs/decisions/2026-12-07-honeypot-operations.md.
"""

import re
from dataclasses import dataclass

MODES = ("on-logout", "idle", "every")
MIN_SECONDS = 10  # a boot costs ~1.3 s of CPU (minimal image): no storm of them
MAX_SECONDS = 30 * 86400
_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
HELP = (
    '"on-logout", "idle:DURATION" or "every:DURATION" with DURATION like "90s", "15m", '
    f'"1h30m" (at least {MIN_SECONDS}s, at most {MAX_SECONDS // 86400}d)'
)


@dataclass(frozen=True)
class RecyclePolicy:
    mode: str  # one of MODES
    seconds: float = 0.0  # for idle and every

    def __str__(self) -> str:
        return self.mode if self.mode == "on-logout" else f"{self.mode}:{self.seconds:g}s"


def parse_duration(text: str) -> int:
    """Seconds in "1h30m"; ValueError naming the accepted form."""
    pos = 0
    total = 0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += int(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"duration {text!r}: expected whole numbers with s, m, h or d, e.g. 1h30m")
    return total


def parse(value: str) -> RecyclePolicy | None:
    """The policy in `value` ("" means none); ValueError saying what is allowed."""
    if value == "":
        return None
    if value == "on-logout":
        return RecyclePolicy("on-logout")
    mode, sep, rest = value.partition(":")
    if not sep or mode not in ("idle", "every"):
        raise ValueError(f"expected {HELP}")
    try:
        seconds = parse_duration(rest)
    except ValueError as e:
        raise ValueError(f"{e}; expected {HELP}") from None
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"{rest} is out of range; expected {HELP}")
    return RecyclePolicy(mode, float(seconds))
