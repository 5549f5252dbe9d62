"""`warden replay`: play a session log back with its timing.

`schedule()` is the policy, pure: records in, (delay, bytes) steps out. Output before `--from`
is written at once (the screen must be rebuilt before playing from there), pauses longer than
`max_idle` are shortened to it (as asciinema's idle limit), and every delay is divided by
`speed`. `play()` performs the steps on a file descriptor.

A tty log (line `tty`, the honeypot kernel's records) plays what the guest's terminals showed:
for an ssh session inside the guest, what its pty master read (output and echo); for the
console, what programs wrote (warden.honeypot.ttyview). `tty` picks one session; when output
moves to another session a marker line names it; `events` adds exec, open, close and resize.

What the guest printed is hostile to the terminal that plays it: `play()` passes it through a
warden.termsafe.TerminalFilter (OSC, DCS, APC, PM, SOS, queries and modes that make the
terminal answer are removed; colours and cursor movement stay) unless the caller asks for the
raw stream. warden's own marker lines are separate steps (`note`), written outside the filter
and with every guest-chosen word in them escaped, in raw mode too: a marker can neither be
swallowed by a guest's unfinished sequence in the filter nor carry one.
"""

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from warden import termsafe
from warden.console import sessionlog as sl
from warden.honeypot.ttyview import TtyStreams


@dataclass(frozen=True)
class Step:
    delay: float  # seconds to wait before writing
    data: bytes
    at: float  # seconds from the start of the log (for a progress display)
    note: bool = False  # warden's own marker line (escaped already), not the guest's output


def _note(text: str) -> bytes:
    return f"\r\n[warden log: {termsafe.line(text)}]\r\n".encode()


def schedule(
    records: Iterable[sl.Record],
    speed: float = 1.0,
    start: float = 0.0,
    max_idle: float | None = 2.0,
    events: bool = False,
    tty: int | None = None,
) -> Iterator[Step]:
    if speed <= 0:
        raise ValueError("speed must be above 0")
    streams = TtyStreams(tty)
    first: int | None = None
    prev: float | None = None  # log time of the last step played with timing
    start_us = round(start * 1e6)  # compared in whole µs: `--at` names a record exactly
    for r in records:
        if first is None:
            first = r.time_us
        at = (r.time_us - first) / 1e6
        early = r.time_us - first < start_us
        parts: list[tuple[bytes, bool]] = []  # (bytes, is a note), in order
        if r.type == sl.OUTPUT:
            parts.append((r.data, False))
        elif events and r.type == sl.EVENT and r.kind not in ("open", "resize"):
            ev = r.event
            detail = " ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k != "kind")
            parts.append((_note(f"{r.kind} {detail}"), True))
        elif r.type == sl.TTYLOG:
            item = streams.feed(r.payload)
            if item is None:
                continue
            if item.switched_to:
                parts.append((_note(item.switched_to), True))
            if item.screen:
                parts.append((item.screen, False))
            if events and item.marker:
                parts.append((_note(item.marker), True))
            if not parts:
                continue
        else:
            continue
        if early:
            delay = 0.0
        elif prev is None:
            delay = 0.0
            prev = at
        else:
            delay = max(0.0, at - prev)
            if max_idle is not None:
                delay = min(delay, max_idle)
            prev = at
        for data, note in parts:
            yield Step(delay / speed, data, at, note)
            delay = 0.0


def play(
    steps: Iterable[Step],
    fd: int,
    sleep: Callable[[float], None] = time.sleep,
    raw: bool = False,
) -> int:
    """Write the steps to `fd` with their delays, the guest's bytes through a TerminalFilter
    unless `raw`; returns the bytes written."""
    screen = None if raw else termsafe.TerminalFilter()
    n = 0
    for s in steps:
        if s.delay > 0:
            sleep(s.delay)
        data = s.data if s.note or screen is None else screen.feed(s.data)
        n += _write_all(fd, data)
    if screen is not None:
        n += _write_all(fd, screen.end())
    return n


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        k = os.write(fd, view)
        view = view[k:]
    return len(data)


def replay_offset(time_us: int, first_us: int) -> str:
    """The `--at` value that starts playing at a record of this time: seconds, with µs
    precision, after the log's first record (`warden timeline` and `logs search` give it)."""
    us = max(0, time_us - first_us)
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def parse_time(text: str, option: str = "--from") -> float:
    """--from / --at: seconds ("90", "1.5") or [[H:]M:]S ("1:30", "0:01:30")."""
    wrong = f"{option} {text!r}: expected seconds or [H:]M:S, e.g. 90 or 1:30"
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise ValueError(wrong) from None
    if len(parts) > 3 or any(p < 0 for p in parts):
        raise ValueError(wrong)
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total
