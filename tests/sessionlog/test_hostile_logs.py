"""Session logs against a hostile guest and a hostile disk, without a guest: scripted floods
through the real writer thread, `warden logs verify` (the real CLI) on cut and deleted parts,
and a real filesystem that fills up (docs/formats/session-log.md, "Quota" and "Manifest")."""

import contextlib
import errno
import gzip
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import ttylog_vectors as v
from tests.support.daemon import WARDEN
from tests.support.logwriter import finish
from warden.paths import Layout
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.ttyview import decode_payload
from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter, reserve_for

MiB = 1 << 20


def _writer(home: Layout, quota: int = 1 << 30) -> tuple[SessionLogWriter, GuestUsage]:
    key = logstore.load_key(home, create=True)
    (home.machine("m1") / "logs").mkdir(parents=True, exist_ok=True)
    return SessionLogWriter(key, home.machines), GuestUsage(home.machine("m1") / "logs", quota)


_done = finish


def _records(path: Path, home: Layout) -> list[sl.Record]:
    _, recs, st = sl.read_all(path, logstore.load_key(home))
    assert not st.problem, st.problem
    return recs


def _tty(recs: list[sl.Record]) -> list[Any]:
    return [decode_payload(r.payload) for r in recs if r.type == sl.TTYLOG]


# ---- the tty log's output cannot use the reserve -------------------------------------------
def test_a_tty_output_flood_leaves_the_reserve_for_execs_and_keystrokes(home: Layout) -> None:
    quota = 4 * MiB
    w, usage = _writer(home, quota)
    lg = SessionLog(w, "m1", "tty", 1, False, lambda: usage)
    # sshd opens a pty pair: ptm0 is tty 1 (the master), pts0 tty 2 (the intruder's shell)
    lg.record(sl.TTYLOG, v.open_rec(1, 1, "ptm0", v.PTY, v.MASTER, link=2))
    lg.record(sl.TTYLOG, v.open_rec(2, 2, "pts0", v.PTY, v.SLAVE, link=1))
    # `cat /dev/urandom`: 64 MiB written to the slave, each byte read again by sshd from the
    # master, as the kernel logs them (records of at most 4096 bytes)
    chunk = os.urandom(4096 - 32)
    seq, flooded = 3, 0
    while flooded < 64 * MiB:
        lg.record(sl.TTYLOG, v.data_rec(seq, 2, v.WRITE, chunk))
        lg.record(sl.TTYLOG, v.data_rec(seq + 1, 1, v.READ, chunk))
        seq += 2
        flooded += 2 * (len(chunk) + 32)
        if seq % 1024 == 1:
            assert w.sync(60)  # at the pace a guest makes them: the queue's bound is not this
    # then the intruder types a command, which runs
    typed = [
        v.data_rec(seq, 1, v.WRITE, b"cat /etc/shadow\r"),  # sshd writes it to the master
        v.data_rec(seq + 1, 2, v.READ, b"cat /etc/shadow\n"),  # the shell reads it
        v.exec_rec(seq + 2, 2, [b"cat", b"/etc/shadow"], b"/bin/cat", uid=0),
    ]
    for raw in typed:
        lg.record(sl.TTYLOG, raw)
    lg.event("boot-end", reason="kernel ended")
    lg.close()
    _done(w)

    path = home.machine("m1") / "logs" / "tty-1.wlog.gz"
    recs = _records(path, home)
    stored = [r.payload for r in recs if r.type == sl.TTYLOG]
    for raw in typed:
        assert raw in stored, decode_payload(raw)
    out_bytes = sum(len(r.payload) for r in recs if r.type == sl.TTYLOG) - sum(map(len, typed))
    assert out_bytes <= quota - reserve_for(quota)
    drops = [r.event for r in recs if r.kind == "dropped"]
    assert drops[0]["state"] == "dropping" and drops[0]["reason"] == "quota"
    assert drops[-1]["state"] == "closing"
    # every output record the writer did not store is counted, byte for byte
    opened = sum(len(r.payload) for r in recs if r.type == sl.TTYLOG)
    total = sum(map(len, typed)) + flooded + 2 * len(v.open_rec(1, 1, "ptm0"))
    assert drops[-1]["bytes_out"] == total - opened
    assert drops[-1]["bytes_in"] == 0
    assert recs[-1].type == sl.END and recs[-1].event["dropped_bytes"] == total - opened


def test_forged_guest_input_cannot_use_the_room_kept_for_the_daemons_events(
    home: Layout,
) -> None:
    """A subverted guest kernel can label anything an exec: the last reserve/2 stays the
    daemon's (its events) and the clients' (typed input)."""
    quota = 2 * MiB
    w, usage = _writer(home, quota)
    lg = SessionLog(w, "m1", "tty", 1, False, lambda: usage)
    argv = [b"x" * 1000] * 3
    for seq in range(1, 3001):  # ~9 MiB of "execs"
        lg.record(sl.TTYLOG, v.exec_rec(seq, 0, argv))
        if seq % 500 == 0:
            assert w.sync(60)
    lg.event("ttylog-lost", lost_records=7, note="the daemon's own event")
    lg.event("boot-end", reason="kernel ended")
    lg.close()
    _done(w)
    recs = _records(home.machine("m1") / "logs" / "tty-1.wlog.gz", home)
    kinds = [r.kind for r in recs if r.type != sl.TTYLOG]
    assert kinds[-4:] == ["ttylog-lost", "boot-end", "dropped", "end"]
    execs = sum(r.size for r in recs if r.type == sl.TTYLOG)
    assert execs <= quota - reserve_for(quota) // 2
    closing = [r.event for r in recs if r.kind == "dropped"][-1]
    assert closing["bytes_in"] > 0 and closing["bytes_out"] == 0


def test_tty_records_count_as_output_or_input_by_what_they_hold() -> None:
    from warden.sessionlog.ttylog import QuotaClassifier

    c = QuotaClassifier()
    session = v.ssh_session()
    # open ptm0, open pts0, resize, keys to the master, echo read from the master, the line
    # read by the shell, exec, the shell's output, read from the master, close, close
    want = [False, False, False, False, True, False, False, True, True, False, False]
    assert [c.is_output(raw) for raw in session] == want
    console = [
        v.open_rec(20, 3, "tty0", v.CONSOLE, 1),
        v.data_rec(21, 3, v.WRITE, b"login: "),
        v.data_rec(22, 3, v.READ, b"root\n"),
        v.drop_rec(23, 5, 500),
    ]
    assert [c.is_output(raw) for raw in console] == [False, True, False, False]
    keys = v.data_rec(24, 1, v.WRITE, b"id\r")
    assert not c.is_output(keys)
    bad_crc = keys[:28] + bytes([keys[28] ^ 1]) + keys[29:]
    unknown_type = v.record(9, 25, b"?", tty=1)
    assert [c.is_output(x) for x in (bad_crc, unknown_type, keys[:31], keys + b"x")] == [
        True,
        True,
        True,
        True,
    ]


def test_after_a_daemon_restart_the_writer_still_knows_the_pty_masters(home: Layout) -> None:
    quota = 2 * MiB
    w, usage = _writer(home, quota)
    lg = SessionLog(w, "m1", "tty", 1, False, lambda: usage)
    for raw in v.ssh_session()[:2]:  # ptm0 = tty 1, pts0 = tty 2
        lg.record(sl.TTYLOG, raw)
    lg.event("daemon-detach")
    lg.close()
    _done(w)
    # The next daemon: the ttys were opened before it came; sshd reads a flood off the master.
    w2, usage2 = _writer(home, quota)
    lg2 = SessionLog(w2, "m1", "tty", 1, True, lambda: usage2)
    chunk = os.urandom(4000)
    for seq in range(3, 3 + 2000):  # ~8 MiB
        lg2.record(sl.TTYLOG, v.data_rec(seq, 1, v.READ, chunk))
        if seq % 256 == 0:
            assert w2.sync(60)
    keys = v.data_rec(5000, 1, v.WRITE, b"exit\r")
    lg2.record(sl.TTYLOG, keys)
    lg2.close()
    _done(w2)
    recs = _records(home.machine("m1") / "logs" / "tty-1.wlog.gz", home)
    assert keys in [r.payload for r in recs if r.type == sl.TTYLOG]
    closing = [r.event for r in recs if r.kind == "dropped"][-1]
    assert closing["bytes_out"] > 0 and closing["bytes_in"] == 0


# ---- verify: cut and deleted parts -------------------------------------------------------
def _verify(home: Layout, *args: str) -> tuple[int, list[dict[str, Any]]]:
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    r = subprocess.run(
        [*WARDEN, "logs", "verify", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else []


def _two_daemons(home: Layout) -> Path:
    """con0 boot 1 of m1: a daemon logs, leaves the guest running (daemon-detach), the next
    one continues the same part and ends it. Returns the closed part."""
    w, usage = _writer(home)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    lg.output(b"login: ")
    lg.input(b"root\r", "alice")
    lg.event("daemon-detach")
    lg.close()
    _done(w)
    w2, usage2 = _writer(home)
    lg2 = SessionLog(w2, "m1", "con0", 1, True, lambda: usage2)
    lg2.event("reattach", waiting=0, buffer=1 << 20, full=False, note="")
    lg2.output(b"# ")
    lg2.input(b"rm -rf /var/log\r", "mallory")
    lg2.output(b"the intruder's output\r\n")
    lg2.event("boot-end", reason="kernel ended")
    lg2.close()
    _done(w2)
    path = home.machine("m1") / "logs" / "con0-1.wlog.gz"
    assert path.exists()
    return path


def test_verify_fails_a_part_cut_right_after_a_daemon_detach(home: Layout) -> None:
    gz = _two_daemons(home)
    assert _verify(home)[0] == 0
    data = gzip.decompress(gz.read_bytes())
    recs = _records(gz, home)
    detach = next(r for r in recs if r.kind == "daemon-detach")
    assert recs[-1].seq > detach.seq + 3
    # Someone removes what the intruder did: everything after the first daemon's detach.
    raw = gz.with_name("con0-1.wlog")
    raw.write_bytes(data[: detach.offset + detach.size])
    gz.unlink()
    assert sl.verify(raw, logstore.load_key(home), live=False).status == "suspended"  # alone
    code, rows = _verify(home)
    assert code == 1
    [row] = [r for r in rows if r["line"] == "con0"]
    assert row["status"] == "cut" and not row["ok"]
    assert f"after record {detach.seq}" in row["message"]
    # the same cut, compressed again
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    assert _verify(home)[0] == 1


def test_verify_names_where_a_cut_part_ended(home: Layout) -> None:
    gz = _two_daemons(home)
    data = gzip.decompress(gz.read_bytes())
    recs = _records(gz, home)
    # cut at a record boundary, and inside a record
    for cut, status in ((recs[-3].offset, "cut"), (recs[-2].offset + 30, "cut")):
        gz.write_bytes(gzip.compress(data[:cut]))
        code, rows = _verify(home)
        assert code == 1
        [row] = rows
        assert row["status"] == status
        assert f"with record {recs[-1].seq}" in row["message"], row["message"]
        assert "cut off" in row["message"]


def test_verify_fails_when_a_part_is_deleted(home: Layout) -> None:
    w, usage = _writer(home)
    for part_no in (1, 2, 3):
        # the part before is closed: a daemon that re-attaches starts the next part
        lg = SessionLog(w, "m1", "ssl0", 4, part_no > 1, lambda: usage)
        lg.output(f"part {part_no}\n".encode())
        lg.close()
        assert w.flush(30)
    _done(w)
    logs = home.machine("m1") / "logs"
    names = sorted(p.name for p in logs.iterdir() if p.name.startswith("ssl0"))
    assert names == ["ssl0-4.2.wlog.gz", "ssl0-4.3.wlog.gz", "ssl0-4.wlog.gz"]
    assert _verify(home)[0] == 0
    for name, part in (("ssl0-4.wlog.gz", 1), ("ssl0-4.3.wlog.gz", 3)):
        kept = (logs / name).read_bytes()
        (logs / name).unlink()
        code, rows = _verify(home)
        assert code == 1
        [gone] = [r for r in rows if not r["ok"]]
        assert (gone["part"], gone["status"]) == (part, "missing")
        (logs / name).write_bytes(kept)
    assert _verify(home)[0] == 0
    # the manifest itself deleted: the parts say they were noted in it
    (logs / "manifest.jsonl").unlink()
    code, rows = _verify(home)
    assert code == 1 and {r["status"] for r in rows} == {"missing"}


def test_verify_fails_an_edited_manifest(home: Layout) -> None:
    _two_daemons(home)
    mpath = home.machine("m1") / "logs" / "manifest.jsonl"
    lines = mpath.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["k"] for x in lines] == ["open", "detach", "resume", "end"]
    # an entry removed
    mpath.write_bytes(b"".join(lines[:1] + lines[2:]))
    code, rows = _verify(home)
    assert code == 1 and "removed" in rows[0]["message"]
    # an entry edited
    edited = json.loads(lines[3])
    edited["seq"] += 1
    mpath.write_bytes(b"".join(lines[:3]) + json.dumps(edited).encode() + b"\n")
    code, rows = _verify(home)
    assert code == 1 and any("fails its HMAC" in r["message"] for r in rows)


# ---- a disk that fills up ----------------------------------------------------------------
@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `where` for the block (a real filesystem that fills)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                   check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_logs_stop_before_the_disk_is_full_and_say_so(home: Layout) -> None:
    logs = home.machine("m1") / "logs"
    with small_fs(logs, "4m"):
        w, usage = _writer(home)  # a quota far above the disk: the disk is the limit
        lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
        for i in range(128):  # 8 MiB onto 4 MiB
            lg.output(os.urandom(64 << 10))
            if i % 16 == 0:
                assert w.sync(60)
        lg.input(b"typed once the disk was full\r", "alice")
        lg.event("boot-end", reason="kernel ended")
        lg.close()
        _done(w)
        left = _free(logs)
        files = {p.name for p in logs.iterdir()}
        path = logs / ("con0-1.wlog.gz" if "con0-1.wlog.gz" in files else "con0-1.wlog")
        assert sl.verify(path, logstore.load_key(home), live=False).status == "complete"
        recs = _records(path, home)
    assert left > 0
    drops = [r for r in recs if r.kind == "dropped"]
    assert drops[0].event["reason"] == "disk" and drops[0].event["state"] == "dropping"
    assert drops[0].time_us > recs[0].time_us
    assert any(r.data == b"typed once the disk was full\r" for r in recs if r.type == sl.INPUT)
    kept = sum(len(r.data) for r in recs if r.type == sl.OUTPUT)
    assert drops[-1].event["bytes_out"] == 128 * (64 << 10) - kept > 0
    assert recs[-1].type == sl.END


def test_a_write_that_fails_leaves_a_timestamped_record_of_what_was_lost(home: Layout) -> None:
    logs = home.machine("m1") / "logs"
    with small_fs(logs, "4m"):
        w, usage = _writer(home)
        lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
        lg.output(b"before\r\n")
        assert w.sync(30)
        # Another process fills the disk (the writer last looked at it a moment ago).
        filler = logs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert _free(logs) == 0
        t0 = time.time_ns() // 1000
        lg.output(b"L" * 20000)
        lg.input(b"lost keys\r", "alice")
        assert w.sync(30)
        t1 = time.time_ns() // 1000
        lg.output(b"still lost\r\n")
        assert w.sync(30)
        filler.unlink()
        lg.output(b"after\r\n")
        lg.close()
        _done(w)
        path = next(p for p in logs.iterdir() if p.name.startswith("con0-1.wlog"))
        assert sl.verify(path, logstore.load_key(home), live=False).status == "complete"
        recs = _records(path, home)
    kinds = [(r.kind, r.data) for r in recs]
    assert ("output", b"before\r\n") in kinds and ("output", b"after\r\n") in kinds
    failed = [r for r in recs if r.kind == "write-failed"]
    assert len(failed) == 1
    e = failed[0].event
    assert e["error"] == "No space left on device"
    assert t0 <= e["first_us"] <= t1 and e["first_us"] <= e["last_us"] <= failed[0].time_us
    # the first batch after the fill failed as it was written; what came once the writer had
    # seen the disk full was dropped before it was written (the `dropped` events say so)
    assert e["records"] >= 1 and e["bytes_out"] >= 20000
    i = recs.index(failed[0])
    assert recs[i - 1].data == b"before\r\n"
    assert [r.data for r in recs if r.type == sl.OUTPUT][-1] == b"after\r\n"
    assert recs[-1].type == sl.END
    lost = 20000 + len(b"still lost\r\n") + len(b"lost keys\r")
    assert recs[-1].event["dropped_bytes"] == lost
    closing = [r.event for r in recs if r.kind == "dropped"][-1]
    assert (closing["bytes_out"], closing["bytes_in"]) == (lost - 10, 10)


# ---- the kernel's stdout/stderr ------------------------------------------------------------
def test_the_kernel_log_stops_at_its_cap_and_a_new_daemon_keeps_the_budget(
    home: Layout,
) -> None:
    from warden.console.kernellog import KernelLogFile

    cap = 64 << 10
    w, usage = _writer(home, 4 * MiB)
    path = home.machine("m1") / "logs" / "kernel-1.log"
    f = KernelLogFile(w, "m1", path, cap, lambda: usage)
    line = b"y" * 999 + b"\n"
    for _ in range(100):  # 100 kB into 64 KiB
        f.write(line)
    f.close()
    assert w.sync(30)
    text = path.read_bytes()
    assert len(text) <= cap
    assert f.stored == len(text.split(b"\n[warden")[0]) > 60_000  # the kernel's bytes, as sent
    assert f.dropped == 100 * len(line) - f.stored
    tail = text.decode().splitlines()
    assert "the kernel log reached its quota of 65536 bytes" in tail[-3]
    assert f"{f.dropped} bytes of kernel output were not stored" in tail[-1]
    assert usage.used == logstore.usage(path.parent)
    # The next daemon: the file is its budget; nothing more of this boot is stored.
    before = len(text)
    f2 = KernelLogFile(w, "m1", path, cap, lambda: usage)
    f2.write(b"more\n" * 1000)
    f2.close()
    _done(w)
    grown = path.read_bytes()
    assert grown.startswith(text) and len(grown) - before < 300
    assert f2.stored == 0 and f2.dropped == 5000
    assert b"5000 bytes of kernel output were not stored" in grown.splitlines()[-1]


def test_the_kernel_relay_reads_its_fifo_and_reports_once(home: Layout) -> None:
    import asyncio

    from warden.console.kernellog import KernelLogFile, KernelRelay
    from warden.daemon.files import MachineFiles
    from warden.daemon.kernelout import fifo, open_kernel_ends

    files = MachineFiles(home.machine("m1"), "m1")
    files.create(())
    reports: list[dict[str, Any]] = []

    async def main() -> KernelLogFile:
        ends = open_kernel_ends(files)  # what the kernel would hold
        w, usage = _writer(home, 1 * MiB)
        f = KernelLogFile(w, "m1", files.logs / "kernel-3.log", 16 << 10, lambda: usage)
        relay = KernelRelay(fifo(files), f, reports.append)
        relay.start()
        for i in range(64):  # the kernel writes, never waiting: a full FIFO drops
            with contextlib.suppress(BlockingIOError):
                os.write(ends.write, f"kernel line {i} ".encode() * 60 + b"\n")
            await asyncio.sleep(0.001)
        ends.close()  # the kernel is gone
        for _ in range(200):
            if relay.eof:
                break
            await asyncio.sleep(0.01)
        relay.close(drain=True)
        _done(w)
        await asyncio.sleep(0.05)  # the report comes through the loop
        return f

    f = asyncio.run(main())
    text = (files.logs / "kernel-3.log").read_bytes()
    assert text.startswith(b"kernel line 0 kernel line 0")
    assert len(text) <= 16 << 10 and f.dropped > 0
    assert len(reports) == 1 and reports[0]["cap"] == 16 << 10


def test_a_guest_made_again_after_destroy_starts_a_new_manifest(home: Layout) -> None:
    w, usage = _writer(home)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    lg.output(b"first life\n")
    lg.close()
    assert w.flush(30)
    logs = home.machine("m1") / "logs"
    logs.rename(home.home / "archived-m1")  # what `warden destroy` does, the writer running
    logs.mkdir()
    usage2 = GuestUsage(logs, 1 << 30)
    lg2 = SessionLog(w, "m1", "con0", 1, False, lambda: usage2)
    lg2.output(b"second life\n")
    lg2.close()
    _done(w)
    entries = [json.loads(x) for x in (logs / "manifest.jsonl").read_text().splitlines()]
    assert [e["n"] for e in entries] == [1, 2]
    assert _verify(home)[0] == 0
