"""The tty log reader (docs/formats/ttylog.md) on hand-made byte vectors: every record type,
incremental input, and truncated, oversized and corrupted logs."""

import struct
import zlib
from pathlib import Path

import pytest

from warden.sessionlog import ttylog
from warden.sessionlog.ttylog import (
    Close,
    Data,
    Direction,
    Drop,
    Exec,
    Open,
    Resize,
    TtyLogDecoder,
    TtyLogError,
    Unknown,
)

# Stream header: magic "WTTYLOG\n", version 1, header_len 32, record_max 4096,
# start_ns 1700000000000000000, host_pid 1234, CRC-32 of the 28 bytes before it.
HEAD = bytes.fromhex("575454594c4f470a 0100 2000 00100000 00002a36fe9c9717 d2040000 0b7bbc23")
# OPEN tty 1, seq 1: major 4, minor 0, driver 2 (console), subtype 2, link 0, pid 1, uid 0, "tty0"
OPEN = bytes.fromhex(
    "0100 0000 01000000 0100000000000000 64002a36fe9c9717 1c000000 dd366241 04000000 "
    "00000000 0200 0200 00000000 01000000 00000000 74747930"
)
# DATA tty 1, seq 2, flags 1 (WRITE): "hi\r\n"
DATA = bytes.fromhex(
    "0300 0100 01000000 0200000000000000 c8002a36fe9c9717 04000000 53a1ece2 68690d0a"
)
# EXEC tty 1, seq 3: pid 42, ppid 1, uid 0, euid 0, argc 2, "/bin/cat", argv cat /etc/issue
EXEC = bytes.fromhex(
    "0400 0000 01000000 0300000000000000 2c012a36fe9c9717 2f000000 b900b199 2a000000 "
    "01000000 00000000 00000000 02000000 0800 0000 2f62696e2f636174 63617400 "
    "2f6574632f697373756500"
)
# DROP seq 7 (seq 4, 5, 6 were lost): lost_records 3, lost_bytes 100
DROP = bytes.fromhex(
    "0600 0000 00000000 0700000000000000 90012a36fe9c9717 10000000 6f88be8c "
    "0300000000000000 6400000000000000"
)
# CLOSE tty 1, seq 8
CLOSE = bytes.fromhex("0200 0000 01000000 0800000000000000 f4012a36fe9c9717 00000000 f5699e0c")
LOG = HEAD + OPEN + DATA + EXEC + DROP + CLOSE
T0 = 1_700_000_000_000_000_000


def record(typ: int, flags: int, tty: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("<HHIQQI", typ, flags, tty, seq, T0, len(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def test_vectors_decode_to_the_records_they_spell() -> None:
    header, records = ttylog.decode(LOG)
    assert header == ttylog.StreamHeader(version=1, record_max=4096, start_ns=T0, host_pid=1234)
    assert records == [
        Open(1, T0 + 100, 1, 4, 0, 2, 2, 0, 1, 0, "tty0"),
        Data(2, T0 + 200, 1, Direction.WRITE, b"hi\r\n"),
        Exec(3, T0 + 300, 1, 42, 1, 0, 0, 2, b"/bin/cat", (b"cat", b"/etc/issue"), False),
        Drop(7, T0 + 400, 3, 100),
        Close(8, T0 + 500, 1),
    ]
    assert not records[0].is_pty_master and not records[0].is_pty_slave


def test_loss_accounting_matches_the_drop_record() -> None:
    d = TtyLogDecoder()
    d.feed(LOG)
    d.close()
    assert (d.missing, d.reported_lost, d.reported_lost_bytes) == (3, 3, 100)


def test_a_vanished_record_shows_as_missing_without_a_drop() -> None:
    d = TtyLogDecoder()
    d.feed(HEAD + OPEN + EXEC)  # seq 2 never arrived and nothing reported it
    assert (d.missing, d.reported_lost) == (1, 0)


def test_byte_by_byte_input_gives_the_same_records() -> None:
    d = TtyLogDecoder()
    out = []
    for i in range(len(LOG)):
        out += d.feed(LOG[i : i + 1])
    d.close()
    assert out == ttylog.decode(LOG)[1]
    assert d.offset == len(LOG)


@pytest.mark.parametrize("cut", [1, 8, 31, 33, 40, 64, len(HEAD + OPEN) - 1, len(LOG) - 1])
def test_truncated_log_keeps_whole_records_and_says_where_it_ends(cut: int) -> None:
    d = TtyLogDecoder()
    got = d.feed(LOG[:cut])
    whole = ttylog.decode(LOG)[1]
    assert got == whole[: len(got)]
    with pytest.raises(TtyLogError, match=r"truncated") as e:
        d.close()
    assert f"at byte {d.offset}" in str(e.value)


def test_empty_log_is_an_error() -> None:
    with pytest.raises(TtyLogError, match="empty tty log"):
        ttylog.decode(b"")


def test_wrong_magic_is_refused_at_once() -> None:
    with pytest.raises(TtyLogError, match="not a tty log"):
        TtyLogDecoder().feed(b"GARBAGE!")
    with pytest.raises(TtyLogError, match="magic"):
        ttylog.decode(b"X" + LOG[1:])


def test_other_version_is_refused() -> None:
    head = bytearray(HEAD)
    head[8:10] = b"\x02\x00"
    head[28:32] = struct.pack("<I", zlib.crc32(bytes(head[:28])))
    with pytest.raises(TtyLogError, match="version 2"):
        ttylog.decode(bytes(head) + OPEN)


def test_corrupted_stream_header_fails_its_crc() -> None:
    head = bytearray(HEAD)
    head[20] ^= 0x01  # start_ns
    with pytest.raises(TtyLogError, match="stream header: CRC"):
        ttylog.decode(bytes(head))


def test_corrupted_record_header_fails_its_crc_and_names_its_offset() -> None:
    for field_byte in (4, 9, 24):  # the tty id, the sequence number, the length
        bad = bytearray(LOG)
        bad[len(HEAD + OPEN) + field_byte] ^= 0x01
        with pytest.raises(TtyLogError, match=rf"record at byte {len(HEAD + OPEN)}: header CRC"):
            TtyLogDecoder().feed(bytes(bad))


def test_the_crc_covers_the_header_not_the_payload() -> None:
    """docs/formats/ttylog.md: a payload checksum cost too much for a channel that does not
    flip bits; a flipped payload byte decodes (and the host's session log protects it)."""
    bad = bytearray(LOG)
    bad[len(HEAD + OPEN) + 32] ^= 0x20  # "hi" -> "Hi"
    _, records = ttylog.decode(bytes(bad))
    assert records[1] == Data(2, T0 + 200, 1, Direction.WRITE, b"Hi\r\n")


def test_oversized_length_is_refused_before_waiting_for_it() -> None:
    huge = bytearray(record(3, 0, 1, 2, b"x"))
    huge[24:28] = struct.pack("<I", 5000)  # more than record_max allows (CRC made to match)
    huge[28:32] = struct.pack("<I", zlib.crc32(bytes(huge[:28])))
    with pytest.raises(TtyLogError, match="exceeds the 4064-byte limit"):
        TtyLogDecoder().feed(HEAD + OPEN + bytes(huge))


def test_sequence_going_backwards_is_refused() -> None:
    with pytest.raises(TtyLogError, match="sequence 1 after 2"):
        ttylog.decode(HEAD + OPEN + DATA + record(3, 0, 1, 1, b"again"))


def test_exec_filename_overrunning_its_payload_is_refused() -> None:
    payload = struct.pack("<IIIIIHH", 1, 0, 0, 0, 1, 200, 0) + b"/bin/sh"
    with pytest.raises(TtyLogError, match="filename of 200 bytes overruns"):
        ttylog.decode(HEAD + record(4, 0, 0, 1, payload))


def test_short_payloads_are_refused() -> None:
    for typ, name in ((1, "OPEN"), (4, "EXEC"), (5, "RESIZE"), (6, "DROP")):
        with pytest.raises(TtyLogError, match=f"{name} record at byte 32: payload of 3 bytes"):
            ttylog.decode(HEAD + record(typ, 0, 1, 1, b"abc"))


def test_unknown_record_types_are_kept_uninterpreted() -> None:
    _, records = ttylog.decode(HEAD + record(99, 5, 1, 1, b"future") + record(2, 0, 1, 2, b""))
    assert records == [Unknown(1, T0, 1, 99, 5, b"future"), Close(2, T0, 1)]


def test_resize_and_truncated_exec_flag() -> None:
    rs = record(5, 0, 3, 1, struct.pack("<HHHH", 24, 80, 0, 0))
    ex = record(4, 1, 3, 2, struct.pack("<IIIIIHH", 7, 1, 0, 0, 9, 2, 0) + b"sh" + b"a\0b\0")
    _, records = ttylog.decode(HEAD + rs + ex)
    assert records[0] == Resize(1, T0, 3, 24, 80, 0, 0)
    assert isinstance(records[1], Exec) and records[1].truncated and records[1].argc == 9


def test_streams_and_ttys_views() -> None:
    extra = record(3, 0, 1, 9, b"ls\n") + record(3, 1, 1, 10, b"more")
    _, records = ttylog.decode(LOG + extra)
    assert ttylog.streams(records) == {
        (1, Direction.WRITE): b"hi\r\nmore",
        (1, Direction.READ): b"ls\n",
    }
    assert ttylog.ttys(records)[1].name == "tty0"


def test_read_file_reads_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(LOG)
    assert list(ttylog.read_file(path, chunk=7)) == ttylog.decode(LOG)[1]


def test_a_log_of_only_its_header_is_whole() -> None:
    header, records = ttylog.decode(HEAD)
    assert header.host_pid == 1234 and records == []


def test_kernel_counters_from_mconsole() -> None:
    text = "fd=5 state=stopped:32 records=120 bytes=4096 lost_records=7 lost_bytes=300"
    stats = ttylog.parse_stats(text)
    assert stats == ttylog.KernelStats(5, "stopped:32", 120, 4096, 7, 300)
    assert stats.stopped_errno == 32
    assert ttylog.parse_stats(text.replace("stopped:32", "on")).stopped_errno is None
    with pytest.raises(TtyLogError, match="expected fd state records"):
        ttylog.parse_stats("tty logging is not built into this kernel")
    with pytest.raises(TtyLogError, match="a counter is not a number"):
        ttylog.parse_stats(text.replace("records=120", "records=many"))
    with pytest.raises(TtyLogError, match="state 'sleepy'"):
        ttylog.parse_stats(text.replace("stopped:32", "sleepy"))
