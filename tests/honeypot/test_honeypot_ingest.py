"""The daemon's tty-log ingest (warden.honeypot.ingest), without a guest: kernel messages made
by hand as docs/formats/ttylog.md lays them out, whole, lost, repeated and damaged."""

import struct

from tests.support import ttylog_vectors as v
from warden.honeypot.ingest import Note, Stored, TtyLogIngest
from warden.sessionlog import ttylog


def split(items: list[Stored | Note]) -> tuple[list[Stored], list[Note]]:
    return [i for i in items if isinstance(i, Stored)], [i for i in items if isinstance(i, Note)]


def test_a_fixed_record_vector_decodes_and_is_stored_verbatim() -> None:
    # DATA, WRITE, tty 1, seq 1, time 0x1122334455667788, 2 bytes "hi": header by hand
    head = bytes.fromhex("0300 0100 01000000 0100000000000000 8877665544332211 02000000")
    raw = head + struct.pack("<I", v.crc(head)) + b"hi"
    ing = TtyLogIngest()
    assert split(ing.feed(v.stream_header()))[1][0].kind == "ttylog-header"
    stored, notes = split(ing.feed(raw))
    assert notes == []
    assert stored[0].raw == raw
    rec = stored[0].record
    assert isinstance(rec, ttylog.Data)
    assert (rec.tty, rec.seq, rec.direction, rec.data) == (1, 1, ttylog.Direction.WRITE, b"hi")
    assert stored[0].time_us == 0x1122334455667788 // 1000


def test_a_session_in_several_messages_keeps_every_record_in_order() -> None:
    ing = TtyLogIngest()
    items = ing.feed(v.stream_header())
    header = split(items)[1][0]
    assert header.fields["host_pid"] == 4242 and header.fields["record_max"] == 4096
    recs = v.ssh_session()
    stored: list[Stored] = []
    for chunk in (recs[:1], recs[1:5], recs[5:]):
        s, n = split(ing.feed(b"".join(chunk)))
        assert n == []
        stored += s
    assert [s.raw for s in stored] == recs
    assert [s.record.seq for s in stored] == list(range(1, 12))
    c = ing.counters
    assert (c.records, c.last_seq, c.host_lost_records, c.kernel_lost_records) == (11, 11, 0, 0)
    assert c.data_bytes == 3 + 4 + 3 + 16 + 16  # the five DATA payloads


def test_a_drop_record_explains_its_gap_and_is_reported() -> None:
    ing = TtyLogIngest()
    ing.feed(v.stream_header())
    ing.feed(v.data_rec(1, 1, v.WRITE, b"a"))
    # records 2..6 lost in the kernel; DROP is 7
    items = ing.feed(v.drop_rec(7, 5, 300) + v.data_rec(8, 1, v.WRITE, b"b"))
    stored, notes = split(items)
    assert [n.kind for n in notes] == ["ttylog-dropped"]
    assert notes[0].fields["lost_records"] == 5 and notes[0].fields["lost_bytes"] == 300
    assert isinstance(items[0], Note)  # reported before the record that reveals it
    assert len(stored) == 2
    assert ing.counters.kernel_lost_records == 5 and ing.counters.host_lost_records == 0


def test_a_gap_without_a_drop_is_a_host_side_loss_with_its_exact_size() -> None:
    ing = TtyLogIngest()
    ing.feed(v.stream_header())
    ing.feed(v.data_rec(1, 1, v.WRITE, b"a"))
    items = ing.feed(v.data_rec(5, 1, v.WRITE, b"e"))
    stored, notes = split(items)
    assert [(n.kind, n.fields["after_seq"], n.fields["next_seq"], n.fields["lost_records"])
            for n in notes] == [("ttylog-gap", 1, 5, 3)]  # fmt: skip
    assert notes[0].is_loss
    # a DROP that reports fewer than are missing: the rest was lost on the host's side
    _, notes = split(ing.feed(v.drop_rec(10, 2, 0)))
    assert sorted(n.kind for n in notes) == ["ttylog-dropped", "ttylog-gap"]
    gap = next(n for n in notes if n.kind == "ttylog-gap")
    assert gap.fields["lost_records"] == 2  # 6..9 missing, the DROP accounts for 2
    assert ing.counters.host_lost_records == 5 and ing.counters.kernel_lost_records == 2


def test_a_damaged_message_is_reported_and_skipped_and_the_next_one_reads() -> None:
    ing = TtyLogIngest()
    ing.feed(v.stream_header())
    good = v.data_rec(1, 1, v.WRITE, b"ok")
    bad = bytearray(v.data_rec(2, 1, v.WRITE, b"xx"))
    bad[5] ^= 0x40  # a flipped bit in the tty id: the header CRC catches it
    stored, notes = split(ing.feed(good + bytes(bad) + v.data_rec(3, 1, v.WRITE, b"zz")))
    assert [s.record.seq for s in stored] == [1]  # what precedes the damage is kept
    assert notes[0].kind == "ttylog-damaged" and "CRC" in notes[0].fields["problem"]
    assert notes[0].fields["offset"] == len(good)
    assert notes[0].fields["skipped_bytes"] == len(bad) + len(v.data_rec(3, 1, v.WRITE, b"zz"))
    stored, notes = split(ing.feed(v.data_rec(4, 1, v.WRITE, b"next")))
    assert [s.record.seq for s in stored] == [4]
    assert [n.kind for n in notes] == ["ttylog-gap"]  # 2 and 3 never stored: said so
    assert ing.counters.damaged_messages == 1


def test_lengths_past_the_message_or_the_limit_and_repeated_numbers_are_damage() -> None:
    ing = TtyLogIngest()
    ing.feed(v.stream_header())
    cut = v.data_rec(1, 1, v.WRITE, b"abcdef")[:-2]
    assert "runs past the end" in split(ing.feed(cut))[1][0].fields["problem"]
    huge = v.record(v.DATA, 1, b"x" * 4065, 1)  # 32 + 4065 > record_max 4096
    assert "exceeds" in split(ing.feed(huge))[1][0].fields["problem"]
    ing.feed(v.data_rec(1, 1, v.WRITE, b"a"))
    again = split(ing.feed(v.data_rec(1, 1, v.WRITE, b"a")))[1][0]
    assert "repeated or out of order" in again.fields["problem"]
    short = split(ing.feed(b"\x03\x00\x01"))[1][0]
    assert "shorter than a record header" in short.fields["problem"]
    assert ing.counters.records == 1 and ing.counters.damaged_messages == 4


def test_records_before_a_stream_header_and_a_bad_header_are_refused() -> None:
    ing = TtyLogIngest()
    n = split(ing.feed(v.data_rec(1, 1, v.WRITE, b"a")))[1][0]
    assert n.kind == "ttylog-damaged" and "not a stream header" in n.fields["problem"]
    head = bytearray(v.stream_header())
    head[8] = 2  # version 2
    n = split(ing.feed(bytes(head)))[1][0]
    assert "version 2" in n.fields["problem"]
    assert not ing.header_seen


def test_a_reattaching_reader_continues_from_the_last_stored_record() -> None:
    ing = TtyLogIngest(last_seq=40, header_seen=True)
    stored, notes = split(
        ing.feed(v.data_rec(41, 1, v.READ, b"a") + v.data_rec(44, 1, v.READ, b"d"))
    )
    assert [s.record.seq for s in stored] == [41, 44]
    assert [(n.kind, n.fields["lost_records"]) for n in notes] == [("ttylog-gap", 2)]
    # not knowing what was stored: the first record is taken as it comes, and said so
    ing = TtyLogIngest(last_seq=None, header_seen=True)
    stored, notes = split(ing.feed(v.data_rec(77, 1, v.READ, b"a")))
    assert [n.kind for n in notes] == ["ttylog-resumed"] and notes[0].fields["first_seq"] == 77
    assert ing.counters.host_lost_records == 0 and ing.counters.first_seq == 77
