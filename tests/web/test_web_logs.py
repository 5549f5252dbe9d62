"""The session logs the logs page serves, on a home's real files written by the log writer:
the listing, the asciicast the player plays, and search hits with the moment to jump to (also
what `warden logs search` prints for typed text)."""

import json
import subprocess
import sys
import time

import pytest

from tests.support.logwriter import finish
from warden.errors import NotFound
from warden.paths import Layout
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.quota import GuestUsage
from warden.sessionlog.writer import SessionLog, SessionLogWriter
from warden.web import logs as weblogs

STEP = 100_000  # µs between keystrokes: 0.1 s
TYPED = ((b"echo replay-1\r", b"echo replay-1\r\nreplay-1\r\n# "), (b"echo filler\r", b"x\r\n# "))


def write_session(lay: Layout) -> tuple[int, list[int]]:
    """web1's con0, boot 1: alice types two commands key by key, the guest answers each.
    Returns the time of the log's first record (the writer's own, made now) and the times of
    the two Enter keys."""
    key = logstore.load_key(lay, create=True)
    w = SessionLogWriter(key, lay.machines)
    usage = GuestUsage(lay.machine("web1") / "logs", 1 << 30)
    con = SessionLog(w, "web1", "con0", 1, False, lambda: usage)
    t0 = time.time_ns() // 1000 + 1_000_000
    con.record(sl.OUTPUT, b"# ", t0)
    t = t0
    enters = []
    for line, answer in TYPED:
        for b in line:
            t += STEP
            con.record(sl.INPUT, sl.input_payload("alice", bytes([b])), t)
        enters.append(t)
        con.record(sl.OUTPUT, answer, t + 1000)
    con.close()
    finish(w)
    first = logstore.read_boot(lay, "web1", "con0", 1, key)[0][0].time_us
    assert first < t0
    return first, enters


def test_listing_cast_and_search_of_a_real_log(home: Layout) -> None:
    t0, enters = write_session(home)
    rows = weblogs.listing(home, "web1", archived=False)
    assert [(r["line"], r["boot"], r["parts"], r["state"]) for r in rows] == [
        ("con0", 1, 1, "closed")
    ]
    cast = weblogs.cast(home, "web1", "con0", 1).splitlines()
    header = json.loads(cast[0])
    assert header["version"] == 2 and "idle_time_limit" not in header
    events = [json.loads(x) for x in cast[1:]]
    assert all(code == "o" for _, code, _ in events)  # typed input is not replayed as such
    assert events[0][1:] == ["o", "# "] and events[0][0] > 0.5
    hits = weblogs.search(home, "web1", "replay-", ignore_case=False)
    typed = next(h for h in hits if h["direction"] == "typed")
    assert typed["user"] == "alice" and typed["line"] == "con0" and typed["boot"] == 1
    # it starts at the keystroke "r" and is whole when Enter ends its line
    first_key = enters[0] - (len(TYPED[0][0]) - 1) * STEP
    assert float(typed["offset"]) == pytest.approx((first_key + 5 * STEP - t0) / 1e6, abs=1e-6)
    assert float(typed["end_offset"]) == pytest.approx((enters[0] - t0) / 1e6, abs=1e-6)
    # the context keeps the command, not what the next line typed over it
    assert "echo replay-1 ⏎ echo filler" in typed["context"]
    printed = [h for h in hits if h["direction"] == "printed"]
    assert [float(h["end_offset"]) for h in printed] == [
        pytest.approx((enters[0] + 1000 - t0) / 1e6, abs=1e-6)
    ] * 2
    # The asciicast's clock is the offsets' clock: the answer's event is at its end_offset.
    answer_at = next(t for t, _, data in events if "replay-1\r\nreplay-1" in data)
    assert answer_at == pytest.approx(float(printed[0]["end_offset"]), abs=1e-6)


def test_a_missing_log_names_no_other_guest(home: Layout) -> None:
    write_session(home)
    with pytest.raises(NotFound) as e:
        weblogs.cast(home, "db1", "con0", 1)
    assert str(e.value) == "db1 has no log of con0 boot 1"  # not "guests with logs: web1"
    with pytest.raises(NotFound, match="web1 has no log of con0 boot 7"):
        weblogs.cast(home, "web1", "con0", 7)


def test_the_cli_shows_the_typed_command_in_a_hits_context(home: Layout) -> None:
    """`warden logs search` stripped a typed hit's context like a screen: the Enter (a bare
    CR) sent it back to the line's start, and the next command overwrote the hit."""
    write_session(home)
    r = subprocess.run(
        [sys.executable, "-m", "warden", "logs", "search", "replay-", "--typed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "echo replay-1 ⏎ echo filler" in r.stdout, r.stdout
