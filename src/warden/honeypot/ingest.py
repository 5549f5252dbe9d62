"""The daemon's side of a guest's tty log: whole kernel records out of SEQPACKET messages.

warden hands the honeypot kernel one end of an AF_UNIX SOCK_SEQPACKET socketpair as
`tty_log_fd` (docs/formats/ttylog.md allows sockets). Each write(2) of the kernel is then one
message, all or nothing, and the kernel always writes from a record boundary: the first
message is the stream header, every later one holds whole records. A pipe was rejected for
this reason: a daemon killed between two reads of a pipe may have taken half a record with
it, and the next daemon could only find the following record boundary by guessing (a
CRC-valid header can also be bytes a guest typed into a terminal). With messages a new daemon
simply starts at the next message, and the records' sequence numbers say exactly how many
records were lost in between (docs/decisions/2026-11-29-honeypot-kernel.md: the wiring).

`TtyLogIngest` is sans-io: `feed(message)` returns, in order, the records to store (raw
bytes, verbatim, and decoded) and the notes to report (the stream header, losses, damage;
a loss comes before the record that reveals it). It never raises on
what the kernel sends: a damaged message is reported and skipped, and the next message starts
clean, because messages are independent.

A guest that controls its kernel can send damage, gaps and drops as fast as it likes
(docs/security.md, "Guest channels"). The counters count every one; the notes do not list
them one by one: after NOTE_BURST notes of one loss kind in a row (no clean record between
them), the rest are summed into one note per NOTE_SUM, and the sum so far is reported before
the next clean record (`coalesced`: how many notes a note stands for).
"""

from dataclasses import dataclass, field
from typing import Any, cast

from warden.sessionlog import ttylog
from warden.sessionlog.ttylog import (
    CRC_OFFSET,
    MAGIC,
    RECORD_HEADER,
    RECORD_MAX,
    STREAM_HEADER,
    Drop,
    Record,
    TtyLogError,
    crc32,
    decode_record,
    decode_stream_header,
)

RecordHead = tuple[int, int, int, int, int, int, int]
MESSAGE_MAX = 65536 + 4096  # the kernel's buffer (64 KiB) is its largest write; margin
NOTE_BURST = 16  # loss notes of one kind reported one by one before they are summed
NOTE_SUM = 4096  # then one note per this many
COALESCED = ("ttylog-damaged", "ttylog-gap", "ttylog-dropped")
_SUMMED = ("skipped_bytes", "lost_records", "lost_bytes")


@dataclass(frozen=True)
class Stored:
    """One kernel record: `raw` (header and payload, verbatim) goes into the session log."""

    raw: bytes
    record: Record

    @property
    def time_us(self) -> int:
        return self.record.time_ns // 1000


@dataclass(frozen=True)
class Note:
    """Something the daemon reports (as a session-log event and a daemon event).

    kinds: `ttylog-header` (the stream began), `ttylog-dropped` (the kernel lost records: the
    host was too slow; from a DROP record), `ttylog-gap` (records the kernel wrote never
    reached this log: lost on the host's side), `ttylog-damaged` (a message that is not whole
    records; skipped), `ttylog-resumed` (reading resumed without knowing the last record
    stored before).
    """

    kind: str
    fields: dict[str, Any]

    @property
    def is_loss(self) -> bool:
        return self.kind in ("ttylog-dropped", "ttylog-gap", "ttylog-damaged")


@dataclass
class Counters:
    messages: int = 0
    records: int = 0
    data_bytes: int = 0
    kernel_lost_records: int = 0  # what DROP records reported
    kernel_lost_bytes: int = 0
    host_lost_records: int = 0  # sequence numbers no DROP record explains
    damaged_messages: int = 0
    damaged_bytes: int = 0
    last_seq: int = 0
    first_seq: int = 0  # of this reader (0: none yet)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class TtyLogIngest:
    """Records from the messages of one boot's tty log.

    `last_seq`: the last record already stored (0 at the start of a boot; None when a daemon
    re-attaches and cannot tell, so the first record's number is taken as it comes).
    `header_seen`: a re-attaching daemon continues after the stream header.
    """

    last_seq: int | None = 0
    header_seen: bool = False
    record_max: int = RECORD_MAX
    counters: Counters = field(default_factory=Counters)
    _runs: dict[str, int] = field(default_factory=dict)  # loss notes of a kind in a row
    _held: dict[str, Note] = field(default_factory=dict)  # their sum, not reported yet

    def feed(self, message: bytes) -> list[Stored | Note]:
        return self._coalesce(self._feed(message))

    def flush(self) -> list[Note]:
        """The notes summed but not reported yet (the log ends)."""
        out = list(self._held.values())
        self._held.clear()
        self._runs.clear()
        return out

    def _coalesce(self, items: list[Stored | Note]) -> list[Stored | Note]:
        out: list[Stored | Note] = []
        kinds = {i.kind for i in items if isinstance(i, Note)}
        for item in items:
            if not isinstance(item, Note) or item.kind not in COALESCED:
                out.append(item)
                continue
            run = self._runs[item.kind] = self._runs.get(item.kind, 0) + 1
            if run <= NOTE_BURST:
                out.append(item)
                continue
            held = self._hold(item)
            if held.fields["coalesced"] >= NOTE_SUM:
                out.append(self._held.pop(item.kind))
        if any(isinstance(i, Stored) for i in items):
            ended = [k for k in self._runs if k not in kinds]
            for kind in ended:
                del self._runs[kind]
                if kind in self._held:
                    out.insert(0, self._held.pop(kind))
        return out

    def _hold(self, note: Note) -> Note:
        held = self._held.get(note.kind)
        if held is None:
            fields = {k: v for k, v in note.fields.items() if k in _SUMMED}
            fields["coalesced"] = 1
            fields["first"] = note.fields
            held = self._held[note.kind] = Note(note.kind, fields)
            return held
        held.fields["coalesced"] += 1
        for k in _SUMMED:
            if k in note.fields:
                held.fields[k] = held.fields.get(k, 0) + note.fields[k]
        return held

    def _feed(self, message: bytes) -> list[Stored | Note]:
        items: list[Stored | Note] = []
        c = self.counters
        c.messages += 1
        offset = 0
        if message.startswith(MAGIC):
            try:
                sh = decode_stream_header(message)
            except TtyLogError as e:
                return [self._damaged(message, 0, str(e))]
            items.append(
                Note(
                    "ttylog-header",
                    {
                        "version": sh.version,
                        "start_ns": sh.start_ns,
                        "host_pid": sh.host_pid,
                        "record_max": sh.record_max,
                        "again": self.header_seen,  # a second header: should never happen
                    },
                )
            )
            self.header_seen = True
            self.record_max = sh.record_max
            offset = STREAM_HEADER.unpack_from(message)[2]
        elif not self.header_seen:
            return [self._damaged(message, 0, "the first message is not a stream header")]
        while offset < len(message):
            problem = self._check(message, offset)
            if problem:
                items.append(self._damaged(message, offset, problem))
                break
            head = cast(RecordHead, RECORD_HEADER.unpack_from(message, offset))
            end = offset + RECORD_HEADER.size + head[5]
            raw = message[offset:end]
            try:
                rec = decode_record(head, raw[RECORD_HEADER.size :], offset)
            except TtyLogError as e:
                items.append(self._damaged(message, offset, str(e)))
                break
            items.extend(self._account(rec))
            items.append(Stored(raw, rec))
            offset = end
        return items

    def _check(self, message: bytes, offset: int) -> str:
        if len(message) - offset < RECORD_HEADER.size:
            return f"{len(message) - offset} bytes left: shorter than a record header"
        head = RECORD_HEADER.unpack_from(message, offset)
        if crc32(message[offset : offset + CRC_OFFSET]) != head[6]:
            return "record header CRC mismatch"
        length = head[5]
        if RECORD_HEADER.size + length > self.record_max:
            return f"record length {length} exceeds the {self.record_max}-byte limit"
        if offset + RECORD_HEADER.size + length > len(message):
            return f"record of {length} bytes runs past the end of its message"
        seq = head[3]
        if self.last_seq is not None and seq <= self.last_seq:
            return f"sequence {seq} after {self.last_seq} (repeated or out of order)"
        return ""

    def _account(self, rec: Record) -> list[Note]:
        c = self.counters
        notes: list[Note] = []
        seq = rec.seq
        if self.last_seq is None:
            notes.append(Note("ttylog-resumed", {"first_seq": seq}))
            gap = 0
        else:
            gap = seq - self.last_seq - 1
        explained = 0
        if isinstance(rec, Drop):
            explained = min(gap, rec.lost_records)
            c.kernel_lost_records += rec.lost_records
            c.kernel_lost_bytes += rec.lost_bytes
            notes.append(
                Note(
                    "ttylog-dropped",
                    {
                        "seq": seq,
                        "lost_records": rec.lost_records,
                        "lost_bytes": rec.lost_bytes,
                        "cause": "the host left the kernel's 64 KiB buffer full",
                    },
                )
            )
        if gap > explained:
            missing = gap - explained
            c.host_lost_records += missing
            assert self.last_seq is not None
            notes.append(
                Note(
                    "ttylog-gap",
                    {
                        "after_seq": self.last_seq,
                        "next_seq": seq,
                        "lost_records": missing,
                        "cause": "written by the kernel, never stored (host side)",
                    },
                )
            )
        self.last_seq = seq
        c.last_seq = seq
        c.first_seq = c.first_seq or seq
        c.records += 1
        if isinstance(rec, ttylog.Data):
            c.data_bytes += len(rec.data)
        return notes

    def _damaged(self, message: bytes, offset: int, problem: str) -> Note:
        c = self.counters
        c.damaged_messages += 1
        c.damaged_bytes += len(message) - offset
        return Note(
            "ttylog-damaged",
            {
                "message": c.messages,
                "offset": offset,
                "skipped_bytes": len(message) - offset,
                "problem": problem,
                "head": message[offset : offset + 32].hex(),
            },
        )
