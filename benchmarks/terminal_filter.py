"""Claim: warden.termsafe.TerminalFilter (what a spy, a replay and a scripted console see)
filters colourful console output faster than a UML console line delivers it.

Input: 4 MiB of `ls --color`-like lines (an SGR sequence every ~10 bytes, some UTF-8), fed in
4 KiB chunks as the daemon relays them. Anchor: warden's other control stripper,
export.strip_controls (the text export's regular expressions), on the same bytes. Goal: at
least 25 MB/s (benchmarks/console.py saw a console line carry 8.6-28.9 MB/s). Also printed, not
claimed: plain text, a binary file, and the worst case (nothing but 3-byte queries), which is
what the concentrator's per-spy CPU budget (FILTER_CPU) is for.
"""

import random
import statistics
import time
from pathlib import Path

from _common import result

# isort: split
from warden import termsafe
from warden.sessionlog import export

SIZE = 4 << 20
CHUNK = 4096
ROUNDS = 5


def colourful(size: int) -> bytes:
    rng = random.Random(7)
    words = [
        "drwxr-xr-x", "root", "4096", "Dec", "7", "12:00", "total", "-rw-r--r--", "café", "☃",
        "\x1b[01;34mbin\x1b[0m", "\x1b[01;32mrun.sh\x1b[0m", "\x1b[01;36mlib -> usr/lib\x1b[0m",
    ]  # fmt: skip
    lines = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(9)) + "\r\n"
        lines.append(line)
        n += len(line.encode())
    return "".join(lines).encode()[:size]


def filter_rate(data: bytes) -> float:
    """MB/s of TerminalFilter over `data` in CHUNK pieces (median of ROUNDS)."""
    rates = []
    for _ in range(ROUNDS):
        f = termsafe.TerminalFilter()
        t0 = time.perf_counter()
        for i in range(0, len(data), CHUNK):
            f.feed(data[i : i + CHUNK])
        f.end()
        rates.append(len(data) / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def strip_rate(data: bytes) -> float:
    rates = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        export.strip_controls(data.decode("utf-8", "replace"))
        rates.append(len(data) / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def main() -> int:
    data = colourful(SIZE)
    ours = filter_rate(data)
    anchor = strip_rate(data)
    print(f"colourful output: filter {ours:.1f} MB/s, strip_controls {anchor:.1f} MB/s")
    binary = (Path("/bin/ls").read_bytes() * 40)[:SIZE]
    plain = b"the quick brown fox jumps over the lazy dog 0123456789\r\n" * 80000
    others = {
        "plain text": plain[:SIZE],
        "a binary file (/bin/ls)": binary,
        "worst case: only ESC [ c queries": (b"\x1b[c" * (SIZE // 3)),
    }
    for name, sample in others.items():
        print(f"{name}: filter {filter_rate(sample):.1f} MB/s")
    result(
        "terminal filter on colourful console output",
        round(ours, 1),
        round(anchor, 1),
        ">= 25 MB/s",
        "MB/s",
        anchor_name="export.strip_controls on the same bytes",
        ok=ours >= 25,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
