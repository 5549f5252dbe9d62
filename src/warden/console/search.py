"""`warden logs search`: on which guest, line and time a string was typed or printed.

Each file's output and input are searched as two continuous streams, so a string split over
several records (a typed word is one record per keystroke) is still found; a hit reports the
time and sequence number of the record where it starts, and for input, who typed it.

In a tty log (line `tty`, warden.honeypot.ttyview) "typed" is what terminals' users typed,
"printed" what the terminals showed, and "executed" the argv of every program the guest ran
(one line per exec).
"""

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from warden.console import logstore
from warden.console import sessionlog as sl
from warden.console.replay import replay_offset
from warden.honeypot.ttyview import TtyStreams


def first_record_us(ref: logstore.LogRef, key: bytes | None) -> int | None:
    """The time of the first record of one file (part 1 of a boot: where offsets count from)."""
    with logstore.reading(ref, key) as reader:
        for r in reader:
            return r.time_us
    return None


@dataclass(frozen=True)
class Hit:
    machine: str
    line: str
    boot: int
    part: int
    direction: str  # "printed", "typed" or "executed" (tty logs)
    seq: int
    time_us: int
    user: str
    context: bytes
    path: str
    offset: str = ""  # `warden replay --at OFFSET` starts playing at this hit's record


class _Stream:
    """One direction of one file, concatenated, remembering where each record starts."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.starts: list[int] = []
        self.recs: list[sl.Record] = []

    def add(self, r: sl.Record, data: bytes | None = None) -> None:
        self.starts.append(len(self.data))
        self.recs.append(r)
        self.data += r.data if data is None else data

    def record_at(self, offset: int) -> sl.Record:
        return self.recs[bisect.bisect_right(self.starts, offset) - 1]


def search_file(
    ref: logstore.LogRef,
    key: bytes | None,
    needle: bytes,
    ignore_case: bool = False,
    typed: bool = True,
    printed: bool = True,
    context: int = 30,
    executed: bool = True,
    first_us: int | None = None,
) -> Iterator[Hit]:
    """Hits in one file. `first_us`: the time of the first record of the boot's log (part 1's
    first record), from which replay offsets count; by default this file's first record."""
    out, inp, run = _Stream(), _Stream(), _Stream()
    tty = TtyStreams()
    with logstore.reading(ref, key) as reader:
        for r in reader:
            if first_us is None:
                first_us = r.time_us
            if r.type == sl.OUTPUT and printed:
                out.add(r)
            elif r.type == sl.INPUT and typed:
                inp.add(r)
            elif r.type == sl.TTYLOG and (item := tty.feed(r.payload)) is not None:
                if item.screen and printed:
                    out.add(r, item.screen)
                elif item.typed and typed:
                    inp.add(r, item.typed)
                elif executed and (argv := tty.executed(item)) is not None:
                    run.add(r, argv.encode() + b"\n")
    pattern = needle.lower() if ignore_case else needle
    for direction, stream in (("typed", inp), ("printed", out), ("executed", run)):
        hay = bytes(stream.data).lower() if ignore_case else bytes(stream.data)
        pos = hay.find(pattern)
        while pos >= 0:
            rec = stream.record_at(pos)
            lo, hi = max(0, pos - context), pos + len(pattern) + context
            yield Hit(
                ref.machine,
                ref.line,
                ref.boot,
                ref.part,
                direction,
                rec.seq,
                rec.time_us,
                rec.user,
                bytes(stream.data[lo:hi]),
                str(ref.path),
                replay_offset(rec.time_us, first_us or rec.time_us),
            )
            pos = hay.find(pattern, pos + max(1, len(pattern)))
