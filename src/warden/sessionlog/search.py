"""`warden logs search`: on which guest, line and time a string was typed or printed.

Each file's output and input are searched as two continuous streams, so a string split over
several records (a typed word is one record per keystroke) is still found; a hit reports the
time and sequence number of the record where it starts, and for input, who typed it.

In a tty log (line `tty`, warden.sessionlog.ttyview) "typed" is what terminals' users typed,
"printed" what the terminals showed, and "executed" the argv of every program the guest ran
(one line per exec).
"""

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.export import strip_controls
from warden.sessionlog.replay import replay_offset
from warden.sessionlog.ttyview import TtyStreams


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
    # The moment the hit is whole: for typed text the record that ended its line (Enter, or
    # the hit's last byte when no line end follows within LINE_MAX), for other text the
    # record holding its last byte. A player shows the command typed from there on.
    end_offset: str = ""

    def context_text(self) -> str:
        """The context as one line of plain text: terminal controls removed, line ends shown
        as ⏎. Typed text keeps what came before a carriage return (Enter), where a screen
        would have moved back over it."""
        text = self.context.decode("utf-8", "replace")
        if self.direction == "typed":
            text = text.replace("\r", "\n")
        return strip_controls(text).replace("\n", " ⏎ ")


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
            end = pos + max(0, len(pattern) - 1)
            if direction == "typed":
                eol = _line_end(stream.data, pos + len(pattern))
                end = eol if eol >= 0 else end
            last = stream.record_at(end)
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
                replay_offset(last.time_us, first_us or rec.time_us),
            )
            pos = hay.find(pattern, pos + max(1, len(pattern)))


LINE_MAX = 4096  # how far after a typed hit its line end is looked for


def _line_end(data: bytearray, start: int) -> int:
    ends = [
        i
        for i in (
            data.find(b"\r", start, start + LINE_MAX),
            data.find(b"\n", start, start + LINE_MAX),
        )
        if i >= 0
    ]
    return min(ends) if ends else -1


def search_refs(
    refs: list[logstore.LogRef],
    key: bytes | None,
    needle: bytes,
    ignore_case: bool = False,
    typed: bool = True,
    printed: bool = True,
    executed: bool = True,
) -> list[Hit]:
    """Hits in every file of `refs`, by time; replay offsets count from the first record of
    each boot's first part (as `warden replay --at` and the asciicast export do)."""
    firsts: dict[tuple[str, str, int, bool], int | None] = {}
    for ref in refs:
        at = (ref.machine, ref.line, ref.boot, ref.archived)
        if ref.part == 1 and at not in firsts:
            firsts[at] = first_record_us(ref, key)
    hits: list[Hit] = []
    for ref in refs:
        hits.extend(
            search_file(
                ref,
                key,
                needle,
                ignore_case=ignore_case,
                typed=typed,
                printed=printed,
                executed=executed,
                first_us=firsts.get((ref.machine, ref.line, ref.boot, ref.archived)),
            )
        )
    hits.sort(key=lambda h: h.time_us)
    return hits
