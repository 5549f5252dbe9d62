"""Issue 5: replay, export (asciicast v2, text, raw) and search of session logs.

Pure tests of the policies (timing schedule, control stripping, asciicast events), then one
real guest session whose log is exported, played by `asciinema play`, searched and replayed.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import run_on, wait_state
from tests.support.daemon import DaemonProc
from warden import termsafe
from warden.sessionlog import codec as sl
from warden.sessionlog import export, replay


def rec(rtype: int, t: float, payload: bytes, seq: int = 0) -> sl.Record:
    return sl.Record(rtype, seq, int(t * 1e6), payload, 0, b"")


def test_schedule_speed_idle_and_from() -> None:
    recs = [
        rec(sl.OUTPUT, 100.0, b"a"),
        rec(sl.INPUT, 100.5, sl.input_payload("u", b"typed")),  # input is not replayed
        rec(sl.OUTPUT, 101.0, b"b"),
        rec(sl.OUTPUT, 111.0, b"c"),  # a 10 s pause
        rec(sl.EVENT, 111.5, sl.event_payload("attach", {"user": "u"})),
        rec(sl.OUTPUT, 112.0, b"d"),
    ]
    steps = list(replay.schedule(recs, speed=1.0, max_idle=2.0))
    assert [(s.data, round(s.delay, 3)) for s in steps] == [
        (b"a", 0.0),
        (b"b", 1.0),
        (b"c", 2.0),
        (b"d", 1.0),
    ]
    fast = list(replay.schedule(recs, speed=4.0, max_idle=None))
    assert [round(s.delay, 3) for s in fast] == [0.0, 0.25, 2.5, 0.25]
    # --from 10: everything before is written at once, timing resumes from there.
    late = list(replay.schedule(recs, start=10.0, max_idle=None))
    assert [(s.data, round(s.delay, 3)) for s in late] == [
        (b"a", 0.0),
        (b"b", 0.0),
        (b"c", 0.0),
        (b"d", 1.0),
    ]
    shown = list(replay.schedule(recs, events=True, max_idle=None))
    assert any(b"[warden log: attach user=u]" in s.data for s in shown)
    with pytest.raises(ValueError):
        list(replay.schedule(recs, speed=0))
    assert replay.parse_time("90") == 90 and replay.parse_time("1:30") == 90
    assert replay.parse_time("1:00:01.5") == 3601.5
    with pytest.raises(ValueError, match="expected seconds"):
        replay.parse_time("soon")


def test_play_writes_with_delays(tmp_path: Path) -> None:
    slept: list[float] = []
    r, w = os.pipe()
    try:
        n = replay.play(
            [replay.Step(0.0, b"x", 0), replay.Step(0.5, b"yz", 1)], w, sleep=slept.append
        )
        assert n == 3 and os.read(r, 10) == b"xyz" and slept == [0.5]
    finally:
        os.close(r)
        os.close(w)


def test_strip_controls() -> None:
    s = (
        "\x1b[1;31mred\x1b[0m plain\r\n"
        "next \x1b]0;window title\x07line\x1b[2K\x1b[10;5H\r\n"
        "abX\x08c\ttab\x07\r\n"
        "progress 10%\rprogress 100%\r\n"
        "\x1b(B\x1b=kept\x1bP1$r\x1b\\"
    )
    assert export.strip_controls(s).split("\n") == [
        "red plain",
        "next line",
        "abc\ttab",
        "progress 100%",
        "kept",
    ]


def test_asciicast_events_and_split_utf8() -> None:
    snow = "☃".encode()
    recs = [
        rec(sl.EVENT, 10.0, sl.event_payload("attach", {"user": "alice", "mode": "rw"})),
        rec(sl.EVENT, 10.1, sl.event_payload("resize", {"cols": 132, "rows": 43})),
        rec(sl.OUTPUT, 10.5, b"x" + snow[:1]),  # a character split over two records
        rec(sl.OUTPUT, 11.0, snow[1:] + b"\xff"),  # and an invalid byte
        rec(sl.INPUT, 11.5, sl.input_payload("alice", b"ls\r")),
    ]
    lines = list(export.asciicast(recs, {"machine": "m", "line": "con0", "boot": 1}))
    header = json.loads(lines[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (132, 43)
    events = [json.loads(x) for x in lines[1:]]
    assert events[0][1] == "m" and "attach" in events[0][2]
    assert events[1] == [0.1, "r", "132x43"]
    assert events[2] == [0.5, "o", "x"] and events[3] == [1.0, "o", "☃\ufffd"]
    assert events[4] == [1.5, "i", "ls\r"]
    assert b"".join(export.raw(recs, "out")) == b"x" + snow + b"\xff"
    assert b"".join(export.raw(recs, "in")) == b"ls\r"


@pytest.mark.guest
def test_export_replay_and_search_a_real_session(daemon: DaemonProc, tmp_path: Path) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("r1"))
    wait_state(daemon, "r1", "running")
    assert run_on(daemon, "r1", "printf '\\033[1;32m%s\\033[0m\\n' green-$((2*21))") == (
        "\x1b[1;32mgreen-42\x1b[0m\n"
    )
    time.sleep(1.2)  # a pause that replay must keep (shortened by --max-idle)
    assert run_on(daemon, "r1", "echo secret-$((1000+337))").strip() == "secret-1337"
    daemon.cli("stop", "r1")

    raw = subprocess.run(
        [sys.executable, "-m", "warden", "logs", "export", "r1", "--format", "raw"],
        env=daemon.env,
        capture_output=True,
        check=True,
    ).stdout
    assert b"\x1b[1;32mgreen-42\x1b[0m" in raw and b"secret-1337" in raw

    text = daemon.cli("logs", "export", "r1", "--format", "text").stdout
    assert "green-42" in text and "\x1b" not in text and "secret-1337" in text

    cast = tmp_path / "r1.cast"
    daemon.cli("logs", "export", "r1", "-o", str(cast))
    header = json.loads(cast.read_text().splitlines()[0])
    assert header["version"] == 2 and header["title"] == "r1 con0 boot 1"
    played = subprocess.run(
        [sys.executable, "-m", "asciinema", "play", "-s", "20", "-i", "0.2", str(cast)],
        capture_output=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal: asciinema plays to stdout
    )
    assert played.returncode == 0, played.stderr
    # asciinema writes exactly the output events: the guest's bytes, in order.
    assert played.stdout.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")

    t0 = time.monotonic()
    replay = [sys.executable, "-m", "warden", "replay", "r1", "--max-idle", "1"]
    replayed = subprocess.run(
        [*replay, "--speed", "2", "--raw"], env=daemon.env, capture_output=True, check=True
    )
    took = time.monotonic() - t0
    assert replayed.stdout == raw
    print(f"replay at speed 2 took {took:.2f}s")
    # By default the same bytes through the terminal filter (busybox's ESC[6n query is gone).
    safe = subprocess.run(
        [*replay, "--speed", "100"], env=daemon.env, capture_output=True, check=True
    )
    assert b"\x1b[6n" in raw and safe.stdout == termsafe.filter_bytes(raw)

    hits = json.loads(daemon.cli("logs", "search", "secret-$((1000", "--json").stdout)
    typed = [h for h in hits if h["direction"] == "typed"]
    assert len(typed) == 1
    assert typed[0]["machine"] == "r1" and typed[0]["line"] == "con0" and typed[0]["boot"] == 1
    assert typed[0]["user"] == "root"  # `warden console` run as root
    found = json.loads(
        daemon.cli("logs", "search", "SECRET-1337", "-i", "--printed", "--json").stdout
    )
    assert [h["direction"] for h in found] == ["printed"]
    dump = [json.loads(x) for x in daemon.cli("logs", "dump", "r1", "--json").stdout.splitlines()]
    # The hit names the record where the printed string starts.
    after = "".join(
        str(r["data"]) for r in dump if r["type"] == "output" and r["seq"] >= found[0]["seq"]
    )
    assert after.index("secret-1337") < 80
    assert typed[0]["time_us"] < found[0]["time_us"]
    nothing = daemon.cli("logs", "search", "never-typed-anywhere", check=False)
    assert nothing.returncode == 1 and nothing.stdout == ""
    listing = daemon.cli("logs", "ls").stdout
    assert re.search(r"r1\s+con0\s+1\s+closed", listing), listing


def test_cli_errors_name_what_is_wrong(home: object) -> None:
    def warden(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "warden", *args], capture_output=True, text=True, timeout=60
        )

    r = warden("logs", "export", "nosuch")
    assert r.returncode == 2 and "no session logs of nosuch line con0" in r.stderr
    r = warden("logs", "verify")
    assert r.returncode == 2 and "no session logs to verify in" in r.stderr
    r = warden("replay", "nosuch", "--from", "soon")
    assert r.returncode == 2 and "--from 'soon': expected seconds" in r.stderr
    r = warden("replay", "nosuch", "--speed", "0")
    assert r.returncode == 2 and "--speed 0.0: expected a number above 0" in r.stderr
