"""The session-log codec and writer without a guest: byte vectors, the chain, tampering,
cuts, recovery after a crash, the quota (docs/formats/session-log.md)."""

import gzip
import hashlib
import hmac
import json
import os
import struct
import threading
from pathlib import Path

import pytest

from tests.support.logwriter import finish
from warden.sessionlog import codec as sl
from warden.sessionlog import store as logstore
from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter

KEY = bytes(range(32))


def test_header_and_record_bytes_match_the_spec() -> None:
    head, mac0 = sl.encode_header({"machine": "m"}, KEY)
    meta = b'{"machine":"m"}'
    assert head[:8] == bytes.fromhex("574c4f470d0a1a0a")
    assert head[8:16] == struct.pack("<HHI", 1, 0, len(meta))
    assert head[16 : 16 + len(meta)] == meta
    assert mac0 == hmac.new(KEY, head[: 16 + len(meta)], hashlib.sha256).digest()
    assert head[16 + len(meta) :] == mac0
    rec, m1 = sl.encode_record(KEY, mac0, sl.OUTPUT, 1, 1_700_000_000_123_456, b"hi")
    assert rec[:24] == bytes.fromhex("01000000020000000100000000000000") + struct.pack(
        "<Q", 1_700_000_000_123_456
    )
    assert rec[24:26] == b"hi"
    assert m1 == hmac.new(KEY, mac0 + rec[:26], hashlib.sha256).digest() == rec[26:]
    inp = sl.input_payload("alice", b"ls\r")
    assert inp == b"\x05alice" + b"ls\r"


def _write(path: Path, records: list[tuple[int, bytes]], end: bool = True) -> bytes:
    head, mac = sl.encode_header({"key_id": sl.key_id(KEY), "machine": "m"}, KEY)
    out = bytearray(head)
    seq = 0
    for rtype, payload in records + ([(sl.END, b"{}")] if end else []):
        seq += 1
        rec, mac = sl.encode_record(KEY, mac, rtype, seq, 1000 + seq, payload)
        out += rec
    path.write_bytes(bytes(out))
    return bytes(out)


RECS = [(sl.OUTPUT, b"hello"), (sl.INPUT, sl.input_payload("a", b"x")), (sl.OUTPUT, b"bye")]


def test_verify_complete_and_every_flipped_byte_is_caught(tmp_path: Path) -> None:
    p = tmp_path / "con0-1.wlog"
    data = _write(p, RECS)
    v = sl.verify(p, KEY, live=False)
    assert v.ok and v.status == "complete" and v.records == 4
    header_size = sl.decode_header(data).size
    offsets = [header_size]
    for _, payload in RECS:
        offsets.append(offsets[-1] + 24 + len(payload) + 32)
    # Flip each byte in turn: verify must fail, and name the record holding that byte.
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        p.write_bytes(bytes(bad))
        v = sl.verify(p, KEY, live=False)
        assert not v.ok, f"flip at {pos} not seen"
        if pos >= header_size:
            rec_index = sum(1 for o in offsets if o <= pos)  # 1-based
            assert v.bad_seq == rec_index, (pos, v)
            assert f"record {rec_index}" in v.message


def test_cut_removed_reordered_and_appended_records(tmp_path: Path) -> None:
    p = tmp_path / "con0-1.wlog"
    data = _write(p, RECS)
    hs = sl.decode_header(data).size
    # A cut exactly between records leaves a valid chain: only the missing END tells.
    p.write_bytes(data[: hs + 24 + 5 + 32])
    v = sl.verify(p, KEY, live=False)
    assert v.status == "cut" and not v.ok and "after record 1" in v.message
    # The same file while a daemon writes it is fine.
    assert sl.verify(p, KEY, live=True).status == "live"
    # A cut inside a record.
    p.write_bytes(data[: hs + 24 + 5 + 10])
    assert sl.verify(p, KEY, live=False).status == "cut"
    # Removing record 2 breaks the chain at record 2.
    r1 = hs + 24 + 5 + 32
    r2 = r1 + 24 + 7 + 32
    p.write_bytes(data[:r1] + data[r2:])
    v = sl.verify(p, KEY, live=False)
    assert v.status == "tampered" and v.bad_seq == 2
    # Bytes after END.
    p.write_bytes(data + b"more")
    assert sl.verify(p, KEY, live=False).status == "tampered"
    # Another key.
    p.write_bytes(data)
    assert sl.verify(p, os.urandom(32), live=False).status == "wrong-key"
    # Not a log at all.
    p.write_bytes(b"hello world, not a log at all" * 3)
    assert sl.verify(p, KEY, live=False).status == "tampered"


def test_reader_bounds() -> None:
    with pytest.raises(sl.LogFormatError, match="shorter than"):
        sl.decode_header(b"WLOG")
    with pytest.raises(sl.LogFormatError, match="not a warden session log"):
        sl.decode_header(b"X" * 64)
    bad = sl.FILE_HEADER.pack(sl.MAGIC, 1, 0, 1 << 20) + b"{}" + b"\0" * 32
    with pytest.raises(sl.LogFormatError, match="out of range"):
        sl.decode_header(bad)
    v2 = sl.FILE_HEADER.pack(sl.MAGIC, 2, 0, 2) + b"{}" + b"\0" * 32
    with pytest.raises(sl.LogFormatError, match="version 2"):
        sl.decode_header(v2)


def _writer(tmp_path: Path, quota: int = 1 << 30) -> tuple[SessionLogWriter, GuestUsage]:
    w = SessionLogWriter(KEY, tmp_path)
    usage = GuestUsage(tmp_path / "m1" / "logs", quota)
    return w, usage


_done = finish


def test_writer_lossless_order_and_compression(tmp_path: Path) -> None:
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "con0", 3, False, lambda: usage)
    blob = os.urandom(300_000)  # split into 64 KiB records, reassembled exactly
    lg.event("attach", user="alice", source="ssh:1.2.3.4:5", mode="rw")
    lg.event("resize", user="alice", cols=120, rows=40)
    for i in range(200):
        lg.input(bytes([i]), "alice")
    lg.output(blob)
    lg.event("boot-end", reason="kernel exited with status 0")
    lg.close()
    _done(w)
    files = sorted(p.name for p in (tmp_path / "m1" / "logs").iterdir())
    assert files == ["con0-3.wlog.gz", "manifest.jsonl"]
    path = tmp_path / "m1" / "logs" / "con0-3.wlog.gz"
    header, recs, st = sl.read_all(path, KEY)
    assert header.meta["machine"] == "m1" and header.meta["boot"] == 3
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert b"".join(r.data for r in recs if r.type == sl.OUTPUT) == blob
    assert bytes(r.data[0] for r in recs if r.type == sl.INPUT) == bytes(range(200))
    assert recs[-1].type == sl.END and recs[-1].event["reason"] == "kernel exited with status 0"
    assert recs[-1].event["bytes_out"] == len(blob) and recs[-1].event["bytes_in"] == 200
    assert all(a.time_us <= b.time_us for a, b in zip(recs, recs[1:], strict=False))
    assert sl.verify(path, KEY, live=False).status == "complete"
    # the quota counts compressed bytes, and the manifest
    assert usage.used == path.stat().st_size + (path.parent / "manifest.jsonl").stat().st_size


def test_quota_drops_output_keeps_input_and_says_so(tmp_path: Path) -> None:
    quota = 256 << 10
    w, usage = _writer(tmp_path, quota)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    for _ in range(100):
        lg.output(b"x" * 10_000)  # ~1 MB against a 256 KiB quota
    lg.input(b"typed after the flood", "alice")
    lg.close()
    assert w.sync(30)
    raw = tmp_path / "m1" / "logs" / "con0-1.wlog"
    on_disk = raw.stat().st_size if raw.exists() else 0
    _done(w)
    assert on_disk <= quota + 200  # END may go past the quota, nothing else
    _, recs, _ = sl.read_all(tmp_path / "m1" / "logs" / "con0-1.wlog.gz", KEY)
    drops = [r.event for r in recs if r.kind == "dropped"]
    assert drops[0]["state"] == "dropping"
    assert drops[-1]["state"] == "closing"
    kept = sum(len(r.data) for r in recs if r.type == sl.OUTPUT)
    assert drops[-1]["bytes_out"] == 1_000_000 - kept > 0
    assert any(r.data == b"typed after the flood" for r in recs if r.type == sl.INPUT)
    assert recs[-1].event["dropped_bytes"] == 1_000_000 - kept


def test_recovery_after_a_crash_mid_record(tmp_path: Path) -> None:
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    lg.output(b"before the crash")
    assert w.sync(30)
    path = tmp_path / "m1" / "logs" / "con0-1.wlog"
    # The daemon dies (kill -9) in the middle of writing a record.
    good = path.read_bytes()
    partial, _ = sl.encode_record(KEY, b"\0" * 32, sl.OUTPUT, 99, 0, b"half a record")
    path.write_bytes(good + partial[:20])
    for gone in w.open_logs:  # that daemon is gone: its fd (and flock) with it, no END
        assert gone.file is not None
        os.close(gone.file.fd)
    w.open_logs.clear()
    _done(w)
    # A new daemon re-attaches the same boot and continues the chain.
    w2, usage2 = _writer(tmp_path)
    lg2 = SessionLog(w2, "m1", "con0", 1, True, lambda: usage2)
    lg2.event("reattach", waiting=10, buffer=1 << 20, full=False, note="n")
    lg2.output(b"after the crash")
    lg2.close()
    _done(w2)
    _, recs, st = sl.read_all(path.with_name("con0-1.wlog.gz"), KEY)
    kinds = [r.kind for r in recs]
    assert kinds == ["open", "output", "recovered", "reattach", "output", "end"]
    rec = recs[2].event
    assert rec["discarded_bytes"] == 20 and rec["last_seq"] == 2 and rec["was"] == "cut"
    assert sl.verify(path.with_name("con0-1.wlog.gz"), KEY, live=False).status == "complete"


def test_stale_logs_are_closed_at_daemon_start(tmp_path: Path) -> None:
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "ssl0", 2, False, lambda: usage)
    lg.output(b"the guest died while no daemon ran")
    lg.event("daemon-detach")
    lg.close()  # suspended: no END, not compressed
    _done(w)
    path = tmp_path / "m1" / "logs" / "ssl0-2.wlog"
    assert sl.verify(path, KEY, live=False).status == "suspended"
    # A leftover of a compression cut short.
    (path.parent / "ssl0-1.wlog.gz.tmp").write_bytes(b"junk")
    w2, _ = _writer(tmp_path)
    w2.finalize_stale()
    _done(w2)
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.jsonl", "ssl0-2.wlog.gz"]
    _, recs, _ = sl.read_all(path.with_name("ssl0-2.wlog.gz"), KEY)
    assert [r.kind for r in recs][-3:] == ["recovered", "boot-end", "end"]
    assert "no daemon ran" in recs[-1].event["reason"]


def test_a_tampered_log_is_never_continued(tmp_path: Path) -> None:
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    lg.output(b"evidence")
    lg.event("daemon-detach")
    lg.close()
    _done(w)
    path = tmp_path / "m1" / "logs" / "con0-1.wlog"
    data = bytearray(path.read_bytes())
    data[data.index(b"evidence")] ^= 0x20
    path.write_bytes(bytes(data))
    w2, usage2 = _writer(tmp_path)
    lg2 = SessionLog(w2, "m1", "con0", 1, True, lambda: usage2)
    lg2.output(b"more")
    lg2.close()
    _done(w2)
    assert path.read_bytes() == bytes(data)  # left exactly as found
    part2 = path.with_name("con0-1.2.wlog.gz")
    assert sl.verify(part2, KEY, live=False).status == "complete"
    assert sl.verify(path, KEY, live=False).status == "tampered"
    refs = logstore.logs_in("m1", path.parent, False)
    assert [(r.boot, r.part) for r in refs] == [(1, 1), (1, 2)]


def test_compressed_file_damage_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "con0-1.wlog"
    data = _write(p, [(sl.OUTPUT, os.urandom(2000)) for _ in range(50)])
    gz = tmp_path / "con0-1.wlog.gz"
    gz.write_bytes(gzip.compress(data))
    p.unlink()
    assert sl.verify(gz, KEY, live=False).status == "complete"
    bad = bytearray(gz.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    gz.write_bytes(bytes(bad))
    v = sl.verify(gz, KEY, live=False)
    assert v.status == "tampered" and v.bad_seq is not None and v.bad_seq > 1
    json.dumps(v.__dict__)  # reportable as JSON


def test_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    from warden.paths import Layout

    lay = Layout(home=tmp_path, cache=tmp_path / "cache")
    with pytest.raises(Exception, match="no session-log key"):
        logstore.load_key(lay)
    k = logstore.load_key(lay, create=True)
    assert len(k) == 32 and logstore.load_key(lay) == k
    assert (logstore.key_path(lay).stat().st_mode & 0o777) == 0o600


def test_other_record_types_for_the_tty_log(tmp_path: Path) -> None:
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "tty", 1, False, lambda: usage)
    kernel_record = bytes(range(40))
    lg.record(sl.TTYLOG, kernel_record, time_us=1_700_000_000_000_000)
    lg.close()
    _done(w)
    path = tmp_path / "m1" / "logs" / "tty-1.wlog.gz"
    _, recs, _ = sl.read_all(path, KEY)
    tty = [r for r in recs if r.type == sl.TTYLOG]
    assert [(r.payload, r.time_us, r.kind) for r in tty] == [
        (kernel_record, 1_700_000_000_000_000, "ttylog")
    ]
    assert sl.verify(path, KEY, live=False).status == "complete"
    assert [r.line for r in logstore.logs_in("m1", path.parent, False)] == ["tty"]


def test_input_is_confirmed_once_its_record_is_in_the_file(tmp_path: Path) -> None:
    """The line relays a keystroke only after this confirmation (daemon/lines.py): at that
    moment the file, read as a killed daemon would leave it, holds the keystroke."""
    w, usage = _writer(tmp_path)
    lg = SessionLog(w, "m1", "con0", 1, False, lambda: usage)
    path = tmp_path / "m1" / "logs" / "con0-1.wlog"
    seen: list[bytes] = []
    confirmed = threading.Event()

    def done(n: int) -> None:  # on the writer thread, as the line's callback is
        _, recs, _ = sl.read_all(path, KEY)
        seen.extend(r.data for r in recs if r.type == sl.INPUT)
        confirmed.set()

    lg.on_input_written(done)
    lg.input(b"rm -rf /\n", "mallory")
    assert confirmed.wait(30)
    assert seen == [b"rm -rf /\n"]
    lg.close()
    after: list[int] = []
    lg.on_input_written(after.append)
    lg.input(b"late", "mallory")  # a closed log logs nothing: it holds nothing back either
    assert after == [4]
    _done(w)
