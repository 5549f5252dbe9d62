"""kill -9 of the daemon loses no byte a guest printed (issue 18, section 3; fault campaign
finding 9): the line relay takes output off the guest's FIFO only once the log holds it
(daemon/lines.py), so a kill repeats bytes in the log instead of losing them, and the next
daemon's `reattach` event says how many of the bytes after it may repeat.

A real guest prints numbered 64-byte lines on ssl0 as fast as its shell can while the daemon
is killed with SIGKILL at random points and started again; every number must be in the logs,
and a number logged twice only within the `may_repeat` bytes after a `reattach` event.
"""

import json
import random
import time
from pathlib import Path

import pytest

from tests.support import faults
from tests.support.daemon import DaemonProc

KILLS = 8


def output_stream(d: DaemonProc, name: str, line: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The log's output bytes in order (every boot), and where each `reattach` event said the
    bytes that follow may repeat: (offset in the stream, may_repeat)."""
    rows = json.loads(d.cli("logs", "ls", name, "--json").stdout)
    boots = sorted({r["boot"] for r in rows if r["line"] == line and not r["archived"]})
    out = bytearray()
    marks: list[tuple[int, int]] = []
    for boot in boots:
        dump = d.cli("logs", "dump", f"{name}:{line}", "--boot", str(boot), "--json").stdout
        for text in dump.splitlines():
            r = json.loads(text)
            if r["type"] == "output":
                out += r["data"].encode("latin-1")
            elif r.get("kind") == "reattach":
                marks.append((len(out), int(r.get("may_repeat", 0))))
    return bytes(out), marks


def unmarked_repeats(stream: bytes, marks: list[tuple[int, int]]) -> list[int]:
    """Numbers logged again outside the bytes a reattach said may repeat."""
    seen: set[int] = set()
    bad: list[int] = []
    for m in faults.LINE_RX.finditer(stream):
        n = int(m.group(1))
        if n in seen:
            where = [o for o, k in marks if o <= m.start() and m.end() <= o + k]
            if not where:
                bad.append(n)
        seen.add(n)
    return bad


@pytest.mark.guest
@pytest.mark.slow
def test_kill_9_while_a_guest_prints_loses_no_logged_byte(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    daemon.apply(faults.OWNER + faults.machine("z1", True, serial=1))
    faults.wait_states(daemon, {"z1": "running"})
    pid = daemon.ls()["z1"]["pid"]
    printer = faults.Printer("z1", per_tick=20, pause_us=0)  # as fast as its shell can
    printer.start(daemon)
    rng = random.Random(20261207)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.3, 1.5))
        daemon.kill9()
        daemon.start(timeout=120)
    time.sleep(1.0)
    printed = printer.stop(daemon)
    assert daemon.ls()["z1"]["pid"] == pid  # one boot throughout: re-attached every time

    tally = faults.Tally()
    missing, twice = faults.account(daemon, printer, printed, tmp_path, tally, "kill -9")
    stream, marks = output_stream(daemon, "z1", "ssl0")
    bad = unmarked_repeats(stream, marks)
    fallbacks = daemon.log_text().count("has not confirmed")  # lines.ACK_GRACE passed
    print(
        f"printed {printed} lines; missing {missing}; logged twice {twice}; marks {marks}; "
        f"relayed unconfirmed after the grace: {fallbacks} times"
    )
    assert printed > 10_000, printed  # it printed throughout the kills
    assert missing == 0, tally.notes
    assert bad == [], f"logged again with no reattach saying they may repeat: {bad[:20]}"
