"""Memory and disk sizes as people write them ("128M", "1.5G") and as UML expects them.

Units are binary, as in UML's own `mem=` parameter: K = 1024 bytes, M = 1024 K, and so on.
"""

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)

SIZE_HELP = 'a size such as "64M", "1.5G" or "512K" (binary units K, M, G, T)'


def parse_size(text: str | int) -> int:
    """Bytes in `text`; raises ValueError naming the accepted forms."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size: expected {SIZE_HELP}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative: expected {SIZE_HELP}")
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size: expected {SIZE_HELP}")
    number, unit = m.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(n: int) -> str:
    """The shortest exact-enough form: 134217728 -> "128M", 1610612736 -> "1.5G"."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"
