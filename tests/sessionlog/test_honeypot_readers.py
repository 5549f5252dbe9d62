"""Reading stored tty logs without a guest: a session log of line `tty` written by the real
writer thread from hand-made kernel records, then read by `warden logs dump|search|export`
and `warden replay` (the real CLI, no daemon), and the pure view under them."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ttylog_vectors as v
from tests.support.daemon import WARDEN
from warden.paths import Layout
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.ttylog import TtyLogError
from warden.sessionlog.ttyview import TtyStreams, TtyView, decode_payload
from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter


def console_session(first_seq: int) -> list[bytes]:
    """The console (tty 3): a getty prints a prompt, root's shell reads `id`."""
    return [
        v.open_rec(first_seq, 3, "tty0", v.CONSOLE, 1),
        v.data_rec(first_seq + 1, 3, v.WRITE, b"pot login: "),
        v.data_rec(first_seq + 2, 3, v.READ, b"id\n"),
        v.exec_rec(first_seq + 3, 3, [b"id"], b"/usr/bin/id", uid=0),
        v.data_rec(first_seq + 4, 3, v.WRITE, b"uid=0(root)\n"),
    ]


@pytest.fixture
def tty_log(home: Layout) -> Iterator[Layout]:
    """machines/pot/logs/tty-1.wlog.gz holding an ssh session, then console traffic."""
    key = logstore.load_key(home, create=True)
    writer = SessionLogWriter(key, home.machines)
    usage = GuestUsage(home.machine("pot") / "logs", 64 << 20)
    log = SessionLog(writer, "pot", "tty", 1, False, lambda: usage)
    log.event("ttylog-header", version=1, host_pid=4242)
    for raw in v.ssh_session() + console_session(12):
        log.record(sl.TTYLOG, raw, decode_payload(raw).time_ns // 1000)
    log.event("boot-end", reason="kernel ended")
    log.close()
    assert writer.flush(30)
    writer.stop()
    writer.join(30)
    yield home


def cli(home: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    """Output decoded as UTF-8 with line ends kept as they are (\r included)."""
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    r = subprocess.run([*WARDEN, *args], env=env, capture_output=True, timeout=60)
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8")
    )


def test_dump_lists_every_kernel_record_with_the_execs_argv(tty_log: Layout) -> None:
    r = cli(tty_log, "logs", "dump", "pot:tty", "--json")
    assert r.returncode == 0, r.stderr
    items = [json.loads(line) for line in r.stdout.splitlines()]
    kernel = [i for i in items if i["type"] == "ttylog"]
    assert [i["kseq"] for i in kernel] == list(range(1, 17))
    execs = [(i["filename"], i["argv"], i["uid"]) for i in kernel if i["op"] == "exec"]
    assert execs == [("/usr/bin/ls", ["ls", "-la", "/etc"], 1000), ("/usr/bin/id", ["id"], 0)]
    opens = {i["tty"]: (i["name"], i["driver"], i["link"]) for i in kernel if i["op"] == "open"}
    assert opens == {1: ("ptm0", "pty", 2), 2: ("pts0", "pty", 1), 3: ("tty0", "system", 0)}
    assert any(i["type"] == "ttylog-header" and i["host_pid"] == 4242 for i in items)
    assert cli(tty_log, "logs", "verify", "pot").returncode == 0


def test_replay_shows_what_the_terminals_showed_and_events_show_the_execs(tty_log: Layout) -> None:
    r = cli(tty_log, "replay", "pot:tty", "--speed", "1000", "--max-idle", "0.01")
    assert r.returncode == 0, r.stderr
    # the ssh session's screen (its master's reads: echo and output), then the console's
    assert r.stdout == (
        "ls\r\npasswd  shadow\r\n\r\n[warden log: tty0]\r\npot login: uid=0(root)\n"
    )
    r = cli(tty_log, "replay", "pot:tty", "--tty", "2", "--events", "--max-idle", "0.01")
    out = r.stdout
    assert "tty0" not in out and "uid=0" not in out  # only the pty pair of tty 2
    assert "[warden log: exec ls -la /etc (pid 200 uid 1000 on pts0)]" in out
    assert out.index("ls\r\n") < out.index("exec ls -la") < out.index("passwd  shadow")


def test_search_finds_typed_printed_and_executed(tty_log: Layout) -> None:
    def hits(*args: str) -> list[tuple[str, str]]:
        r = cli(tty_log, "logs", "search", *args, "--json")
        return [(h["direction"], h["line"]) for h in json.loads(r.stdout)]

    assert hits("shadow") == [("printed", "tty")]
    assert hits("ls\r") == [("typed", "tty"), ("printed", "tty")]  # keystrokes, then echo
    assert hits("ls\n") == []  # what the shell read is not what was typed nor shown
    assert hits("-la /etc") == [("executed", "tty")]
    assert hits("id", "--executed") == [("executed", "tty")]
    assert hits("id", "--typed") == [("typed", "tty")]  # read on the console
    r = cli(tty_log, "logs", "search", "nothing-like-this")
    assert r.returncode == 1


def test_export_text_raw_and_asciicast(tty_log: Layout, tmp_path: Path) -> None:
    r = cli(tty_log, "logs", "export", "pot:tty", "--format", "text", "--tty", "1")
    assert r.stdout == "ls\npasswd  shadow\n\n"
    r = cli(tty_log, "logs", "export", "pot:tty", "--format", "raw", "--direction", "in")
    assert r.stdout == "ls\rid\n"
    cast = tmp_path / "s.cast"
    r = cli(tty_log, "logs", "export", "pot:tty", "-o", str(cast), "--tty", "2")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in cast.read_text().splitlines()]
    assert (lines[0]["width"], lines[0]["height"]) == (100, 24)  # the RESIZE record
    kinds = [(e[1], e[2]) for e in lines[1:]]
    assert ("i", "ls\r") in kinds and ("o", "passwd  shadow\r\n") in kinds
    assert ("m", "exec ls -la /etc (pid 200 uid 1000 on pts0)") in kinds
    assert not any("uid=0" in str(e) for e in kinds)


def test_the_view_tells_screen_from_typed_on_ptys_and_the_console() -> None:
    view = TtyView()
    recs = [view.decode(raw) for raw in v.ssh_session() + console_session(12)]
    screens = [view.screen(r) for r in recs]
    typed = [view.typed(r) for r in recs]
    assert [s for s in screens if s] == [b"ls\r\n", b"passwd  shadow\r\n", b"pot login: ",
                                         b"uid=0(root)\n"]  # fmt: skip
    assert [t for t in typed if t] == [b"ls\r", b"id\n"]
    assert view.session(2) == 1 and view.label(1) == "pts0" and view.label(3) == "tty0"
    only_console = TtyStreams(3)
    items = [only_console.feed(raw) for raw in v.ssh_session() + console_session(12)]
    assert [i.record.seq for i in items if i is not None and i.record is not None] == [
        12, 13, 14, 15, 16,
    ]  # fmt: skip


def test_a_damaged_payload_is_named_not_decoded() -> None:
    raw = bytearray(v.data_rec(1, 1, v.WRITE, b"abc"))
    raw[-1:] = b""
    with pytest.raises(TtyLogError, match="the record says 3 payload bytes"):
        decode_payload(bytes(raw))
    raw = bytearray(v.data_rec(1, 1, v.WRITE, b"abc"))
    raw[9] ^= 1
    with pytest.raises(TtyLogError, match="CRC"):
        decode_payload(bytes(raw))
    item = TtyStreams().feed(bytes(raw))
    assert item is not None and item.record is None and "CRC" in (item.marker or "")
