"""The session-log codec: file header, records, the HMAC chain, and a verifying reader.

The format is docs/formats/session-log.md; every constant here quotes it. This module does
no I/O policy (the writer thread is warden.sessionlog.writer, the files and keys are
warden.sessionlog.store): it encodes bytes and reads them back from any binary file object.
"""

import gzip
import hashlib
import hmac
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

from warden.errors import WardenError

MAGIC = b"WLOG\r\n\x1a\n"  # 57 4c 4f 47 0d 0a 1a 0a
VERSION = 1
MAX_META = 4096
MAC_LEN = 32  # HMAC-SHA256
MAX_PAYLOAD = 1 << 20  # readers treat more as damage
WRITE_PAYLOAD = 64 << 10  # the writer splits data into records of at most this

# struct file_header { char magic[8]; u16 version; u16 flags; u32 meta_len; }  (little-endian)
FILE_HEADER = struct.Struct("<8sHHI")
# struct record { u8 type; u8 flags; u16 zero; u32 len; u64 seq; u64 time_us; }
RECORD_HEADER = struct.Struct("<BBHIQQ")

OUTPUT = 1
INPUT = 2
EVENT = 3
END = 4
TTYLOG = 5
TYPE_NAMES = {OUTPUT: "output", INPUT: "input", EVENT: "event", END: "end", TTYLOG: "ttylog"}


class LogFormatError(WardenError):
    """A session log is not one, or is damaged; the message names the file and record."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).digest()[:8].hex()


def mac(key: bytes, prev: bytes, data: bytes, payload: bytes = b"") -> bytes:
    h = hmac.new(key, prev, hashlib.sha256)
    h.update(data)
    if payload:
        h.update(payload)
    return h.digest()


# ---- encoding ---------------------------------------------------------------------------


def encode_header(meta: dict[str, Any], key: bytes) -> tuple[bytes, bytes]:
    """The file header and mac0 (returned apart too: it starts the chain)."""
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    if not 2 <= len(blob) <= MAX_META:
        raise ValueError(f"session-log meta is {len(blob)} bytes; at most {MAX_META}")
    head = FILE_HEADER.pack(MAGIC, VERSION, 0, len(blob)) + blob
    mac0 = mac(key, b"", head)
    return head + mac0, mac0


def encode_record(
    key: bytes, prev_mac: bytes, rtype: int, seq: int, time_us: int, payload: bytes
) -> tuple[bytes, bytes]:
    """One record (header, payload, mac) and its mac, which the next record chains to."""
    head, m = record_parts(key, prev_mac, rtype, seq, time_us, [payload])
    return head + payload + m, m


def record_parts(
    key: bytes, prev_mac: bytes, rtype: int, seq: int, time_us: int, payload: list[bytes]
) -> tuple[bytes, bytes]:
    """The header and mac of a record whose payload is the concatenation of `payload`'s
    pieces (the writer writes header, pieces and mac with writev, never joining them)."""
    head = RECORD_HEADER.pack(rtype, 0, 0, sum(len(p) for p in payload), seq, time_us)
    h = hmac.new(key, prev_mac, hashlib.sha256)
    h.update(head)
    for piece in payload:
        h.update(piece)
    return head, h.digest()


def input_payload(user: str, data: bytes) -> bytes:
    u = user.encode()[:255]
    return bytes([len(u)]) + u + data


def event_payload(kind: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"kind": kind, **fields}, sort_keys=True, default=str).encode()


# ---- decoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    version: int
    meta: dict[str, Any]
    size: int  # bytes up to and including mac0
    mac0: bytes

    @property
    def key_id(self) -> str:
        return str(self.meta.get("key_id", ""))


@dataclass(frozen=True)
class Record:
    type: int
    seq: int
    time_us: int
    payload: bytes
    offset: int  # of the record header in the (uncompressed) file
    mac: bytes

    @property
    def size(self) -> int:
        return RECORD_HEADER.size + len(self.payload) + MAC_LEN

    @property
    def data(self) -> bytes:
        """The terminal bytes of an OUTPUT or INPUT record."""
        if self.type == INPUT:
            n = self.payload[0] if self.payload else 0
            return self.payload[1 + n :]
        return self.payload if self.type == OUTPUT else b""

    @property
    def user(self) -> str:
        if self.type == INPUT and self.payload:
            n = self.payload[0]
            return self.payload[1 : 1 + n].decode(errors="replace")
        if self.type == EVENT:
            return str(self.event.get("user", ""))
        return ""

    @property
    def event(self) -> dict[str, Any]:
        """The JSON object of an EVENT or END record ({} for others or if unreadable)."""
        if self.type not in (EVENT, END):
            return {}
        try:
            obj = json.loads(self.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return obj if isinstance(obj, dict) else {}

    @property
    def kind(self) -> str:
        if self.type == EVENT:
            return str(self.event.get("kind", "?"))
        return TYPE_NAMES.get(self.type, f"type{self.type}")


def decode_header(buf: bytes, where: str = "session log") -> Header:
    """Parse the file header from the start of `buf` (which must hold all of it)."""
    if len(buf) < FILE_HEADER.size:
        raise LogFormatError(f"{where}: {len(buf)} bytes, shorter than a session-log header")
    magic, version, _flags, meta_len = FILE_HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise LogFormatError(f"{where}: not a warden session log (magic {magic!r})")
    if version != VERSION:
        raise LogFormatError(f"{where}: session-log version {version}; this warden reads 1")
    if not 2 <= meta_len <= MAX_META:
        raise LogFormatError(f"{where}: header meta length {meta_len} is out of range")
    end = FILE_HEADER.size + meta_len
    if len(buf) < end + MAC_LEN:
        raise LogFormatError(f"{where}: the header is cut short")
    try:
        meta = json.loads(buf[FILE_HEADER.size : end])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LogFormatError(f"{where}: the header's meta is not JSON") from None
    if not isinstance(meta, dict):
        raise LogFormatError(f"{where}: the header's meta is not a JSON object")
    return Header(version, meta, end + MAC_LEN, bytes(buf[end : end + MAC_LEN]))


def open_raw(path: Path) -> IO[bytes]:
    """The uncompressed bytes of a log file, whether it is .wlog or .wlog.gz."""
    if path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")  # noqa: SIM115 - returned to the caller


@dataclass
class ReadState:
    """Where a read stopped, for verify and for a writer that continues a file."""

    records: int = 0
    last_seq: int = 0
    last_mac: bytes = b""
    good_end: int = 0  # offset just after the last whole, valid record
    ended: bool = False  # the last record was END
    last_kind: str = ""
    tail: int = 0  # bytes after good_end that are not a whole record (a cut, or being written)
    problem: str = ""  # set when the chain breaks: names the record
    bad_seq: int | None = None
    first_us: int = 0
    last_us: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class LogReader:
    """Reads one session log from the start, checking the chain when given the key.

    Iterate for records; afterwards `state` says where and why reading stopped. With
    `strict=True` a broken chain raises LogFormatError; otherwise reading stops there and
    `state.problem` says why.
    """

    def __init__(self, f: IO[bytes], key: bytes | None, where: str = "session log"):
        self.f = f
        self.key = key
        self.where = where
        first = self._read(FILE_HEADER.size)
        if len(first) >= FILE_HEADER.size:
            meta_len = FILE_HEADER.unpack_from(first)[3]
            if 2 <= meta_len <= MAX_META:
                first += self._read(meta_len + MAC_LEN)
        self.header = decode_header(first, where)
        if key is not None and not hmac.compare_digest(
            mac(key, b"", first[: self.header.size - MAC_LEN]), self.header.mac0
        ):
            raise LogFormatError(f"{where}: the header's MAC does not match (edited header)")
        self.state = ReadState(last_mac=self.header.mac0, good_end=self.header.size)

    def _read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except (OSError, EOFError, zlib.error) as e:
            # gzip: a damaged or cut compressed stream ends the readable part here.
            self._io_error = f"compressed data is damaged ({e})"
            return b""

    _io_error = ""

    def __iter__(self) -> Iterator[Record]:
        st = self.state
        while not st.ended:
            head = self._read(RECORD_HEADER.size)
            if not head:
                if self._io_error:
                    st.problem = f"record {st.last_seq + 1}: {self._io_error}"
                    st.bad_seq = st.last_seq + 1
                return
            if len(head) < RECORD_HEADER.size:
                st.tail = len(head)
                return
            rtype, _flags, _zero, length, seq, time_us = RECORD_HEADER.unpack(head)
            if length > MAX_PAYLOAD:
                st.problem = (
                    f"record {st.last_seq + 1} (offset {st.good_end}): length {length} is "
                    f"over {MAX_PAYLOAD}: damaged"
                )
                st.bad_seq = st.last_seq + 1
                return
            rest = self._read(length + MAC_LEN)
            if len(rest) < length + MAC_LEN:
                st.tail = len(head) + len(rest)
                if self._io_error:
                    st.problem = f"record {st.last_seq + 1}: {self._io_error}"
                    st.bad_seq = st.last_seq + 1
                return
            payload, m = rest[:length], rest[length:]
            if self.key is not None and not hmac.compare_digest(
                mac(self.key, st.last_mac, head, payload), m
            ):
                st.problem = (
                    f"record {st.last_seq + 1} (offset {st.good_end}, claims seq {seq}): "
                    "MAC does not match: the record or one before it was edited, or a "
                    "record was removed"
                )
                st.bad_seq = st.last_seq + 1
                return
            if seq != st.last_seq + 1:
                st.problem = (
                    f"record at offset {st.good_end}: seq {seq} follows {st.last_seq}: "
                    "records were removed or reordered"
                )
                st.bad_seq = st.last_seq + 1
                return
            rec = Record(rtype, seq, time_us, bytes(payload), st.good_end, bytes(m))
            st.records += 1
            st.last_seq = seq
            st.last_mac = rec.mac
            st.good_end += rec.size
            st.ended = rtype == END
            st.last_kind = rec.kind
            if not st.first_us:
                st.first_us = time_us
            st.last_us = time_us
            name = TYPE_NAMES.get(rtype, "other")
            st.counts[name] = st.counts.get(name, 0) + 1
            yield rec
        # Anything after END is not part of the log.
        extra = self._read(1)
        if extra:
            st.problem = f"bytes follow the END record (seq {st.last_seq}): appended data"
            st.bad_seq = st.last_seq + 1


def read_all(path: Path, key: bytes | None) -> tuple[Header, list[Record], ReadState]:
    with open_raw(path) as f:
        r = LogReader(f, key, str(path))
        recs = list(r)
        return r.header, recs, r.state


@dataclass(frozen=True)
class Verdict:
    """What `warden logs verify` says about one file (statuses: docs/formats/session-log.md).

    The fields after `bad_seq` say where the file's valid chain ends, for the manifest check
    (warden.sessionlog.verify)."""

    status: str
    records: int
    message: str
    bad_seq: int | None = None
    last_seq: int = 0
    last_mac: str = ""  # hex
    mac0: str = ""  # hex
    last_kind: str = ""
    noted: bool = False  # the header says the manifest notes this file

    @property
    def ok(self) -> bool:
        return self.status in ("complete", "live", "suspended")


def verify(path: Path, key: bytes, live: bool) -> Verdict:
    """Check one file's chain from the header to its end. `live`: a daemon holds it open."""
    try:
        with open_raw(path) as f:
            r = LogReader(f, None, str(path))
            if r.header.key_id != key_id(key):
                return Verdict(
                    "wrong-key",
                    0,
                    f"signed with key {r.header.key_id}, this home's key is {key_id(key)}",
                )
        with open_raw(path) as f:
            r = LogReader(f, key, str(path))
            for _ in r:
                pass
            st = r.state
    except LogFormatError as e:
        return Verdict("tampered", 0, str(e), 0)
    except (OSError, EOFError, zlib.error) as e:
        return Verdict("tampered", 0, f"{path}: cannot read: {e}", 0)
    v = _verdict(st, live)
    return replace(
        v,
        last_seq=st.last_seq,
        last_mac=st.last_mac.hex(),
        mac0=r.header.mac0.hex(),
        last_kind=st.last_kind,
        noted=bool(r.header.meta.get("manifest")),
    )


def _verdict(st: ReadState, live: bool) -> Verdict:
    if st.problem:
        return Verdict("tampered", st.records, st.problem, st.bad_seq)
    if st.ended:
        return Verdict("complete", st.records, f"{st.records} records, ends with END")
    if live:
        tail = f"; {st.tail} bytes of a record being written" if st.tail else ""
        return Verdict("live", st.records, f"{st.records} records so far (being written){tail}")
    if st.last_kind == "daemon-detach" and not st.tail:
        return Verdict(
            "suspended",
            st.records,
            f"{st.records} records; the daemon detached while the guest ran (no END yet)",
        )
    if st.tail:
        where = (
            f"the file ends inside record {st.last_seq + 1} (offset {st.good_end}, "
            f"{st.tail} bytes): it was cut there, or that record's length was changed"
        )
    else:
        where = f"the file was cut after record {st.last_seq}"
    return Verdict(
        "cut",
        st.records,
        f"{st.records} valid records, no END record, and no daemon writes it: {where}",
        st.last_seq + 1,
    )
