"""What one client's terminal may get of a line's output (the SSH concentrator's sessions and
the web console's alike): sans-io, the clock is passed in.

The writer gets the guest's bytes raw (its programs need their terminal's answers), as does a
client that asked for them (`--raw`); everyone else (spies, a writer demoted by a takeover)
gets them through warden.termsafe.TerminalFilter (no OSC, DCS, APC, PM, SOS or terminal
queries). Filtering costs CPU on the daemon's loop, so it has a budget per second: past it a
spy's output is skipped, and said so, rather than a guest's flood slowing the loop that serves
every other guest (docs/decisions/2026-12-07-operator-terminals.md).
"""

import time
from collections.abc import Callable

from warden import termsafe

CAN = b"\x18"  # cancels any escape sequence a terminal is in the middle of
# CPU a spy's output filter may use per second on the daemon's loop. Ordinary output filters
# at ~50 MB/s, but output made of nothing but escape sequences only at ~1.5 MB/s
# (benchmarks/terminal_filter.py): past this budget a spy's output is skipped, and said so.
FILTER_CPU = 0.2


class CpuBudget:
    """At most `per_second` seconds spent per one-second window (sans-io: times are given)."""

    def __init__(self, per_second: float):
        self.per_second = per_second
        self.window = 0.0
        self.spent = 0.0

    def allow(self, now: float) -> bool:
        if now - self.window >= 1.0:
            self.window, self.spent = now, 0.0
        return self.spent < self.per_second

    def spend(self, seconds: float) -> None:
        self.spent += seconds


class ClientScreen:
    """One client's view of a line's output: `feed` returns the bytes to send and the notices
    (warden's own lines) to show before them."""

    def __init__(self, raw: bool = False, clock: Callable[[], float] = time.perf_counter):
        self.raw = raw  # --raw: a spy gets the guest's bytes unfiltered
        self.clock = clock
        self.filter: termsafe.TerminalFilter | None = None  # made when first needed
        self.sent_raw = False  # raw bytes went out (as the writer) before any filtering
        self.budget = CpuBudget(FILTER_CPU)
        self.skipped = 0  # output bytes not shown since the budget ran out

    def feed(self, data: bytes, writer: bool) -> tuple[bytes, list[str]]:
        if self.raw or writer:
            self.sent_raw = True
            return data, []
        notices: list[str] = []
        start = self.clock()
        if not self.budget.allow(start):
            if not self.skipped:
                notices.append("[warden: output too fast to filter for a spy: skipping some]")
            self.skipped += len(data)
            return b"", notices
        if self.skipped:
            notices.append(f"[warden: {self.skipped} bytes skipped; the session log has them]")
            self.skipped = 0
        prefix = b""
        if self.filter is None:
            self.filter = termsafe.TerminalFilter()
            prefix = CAN if self.sent_raw else b""  # CAN ends what the raw stream left open
        out = prefix + self.filter.feed(data)
        self.budget.spend(self.clock() - start)
        return out, notices
