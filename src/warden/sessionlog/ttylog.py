"""The honeypot kernel's tty log: a bounds-checked, incremental reader of its records.

The format is written down in docs/formats/ttylog.md; the structs below quote it. The decoder
is sans-io (bytes in, records out) so it is tested with byte vectors; `TtyLogPipe` is the
host end a boot needs: a pipe whose write end the kernel gets as `tty_log_fd=N`, read in
asyncio into a raw file and the decoder.
"""

import asyncio
import contextlib
import fcntl
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

from warden.errors import WardenError

MAGIC = b"WTTYLOG\n"
VERSION = 1
RECORD_MAX = 4096  # no record is longer (header + payload); the kernel's PIPE_BUF writes

# struct tty_log_head { char magic[8]; le16 version; le16 header_len; le32 record_max;
#                       le64 start_ns; le32 host_pid; le32 crc; }
STREAM_HEADER = struct.Struct("<8sHHIQII")
# struct tty_log_rec { le16 type; le16 flags; le32 tty; le64 seq; le64 time_ns; le32 len;
#                      le32 crc; }
RECORD_HEADER = struct.Struct("<HHIQQII")
CRC_OFFSET = 28  # both headers end with the CRC-32 of the 28 bytes before it
# OPEN: le32 major, minor; le16 driver, subtype; le32 link, pid, uid; then the name
OPEN_PAYLOAD = struct.Struct("<IIHHIII")
# EXEC: le32 pid, ppid, uid, euid, argc; le16 filename_len, reserved; filename; argv\0...
EXEC_PAYLOAD = struct.Struct("<IIIIIHH")
# RESIZE: le16 rows, cols, xpixel, ypixel
RESIZE_PAYLOAD = struct.Struct("<HHHH")
# DROP: le64 lost_records, lost_bytes
DROP_PAYLOAD = struct.Struct("<QQ")

PIPE_SIZE = 1 << 20  # the pipe a guest logs into: room for bursts while the host is busy


class TtyLogError(WardenError):
    """Bytes that are not a tty log as docs/formats/ttylog.md defines it."""


class RecordType(IntEnum):
    OPEN = 1
    CLOSE = 2
    DATA = 3
    EXEC = 4
    RESIZE = 5
    DROP = 6


class Direction(IntEnum):
    READ = 0  # a guest process read these bytes from the tty
    WRITE = 1  # a guest process wrote them to the tty


class Driver(IntEnum):  # TTY_DRIVER_TYPE_* (include/linux/tty_driver.h)
    SYSTEM = 1
    CONSOLE = 2
    SERIAL = 3
    PTY = 4
    SCC = 5
    SYSCONS = 6


PTY_MASTER = 1  # PTY_TYPE_MASTER
PTY_SLAVE = 2  # PTY_TYPE_SLAVE


@dataclass(frozen=True)
class StreamHeader:
    version: int
    record_max: int
    start_ns: int
    host_pid: int


@dataclass(frozen=True)
class Open:
    seq: int
    time_ns: int
    tty: int
    major: int
    minor: int
    driver: int
    subtype: int
    link: int
    pid: int
    uid: int
    name: str

    @property
    def is_pty_master(self) -> bool:
        return self.driver == Driver.PTY and self.subtype == PTY_MASTER

    @property
    def is_pty_slave(self) -> bool:
        return self.driver == Driver.PTY and self.subtype == PTY_SLAVE


@dataclass(frozen=True)
class Close:
    seq: int
    time_ns: int
    tty: int


@dataclass(frozen=True)
class Data:
    seq: int
    time_ns: int
    tty: int
    direction: Direction
    data: bytes


@dataclass(frozen=True)
class Exec:
    seq: int
    time_ns: int
    tty: int
    pid: int
    ppid: int
    uid: int
    euid: int
    argc: int
    filename: bytes
    argv: tuple[bytes, ...]
    truncated: bool


@dataclass(frozen=True)
class Resize:
    seq: int
    time_ns: int
    tty: int
    rows: int
    cols: int
    xpixel: int
    ypixel: int


@dataclass(frozen=True)
class Drop:
    seq: int
    time_ns: int
    lost_records: int
    lost_bytes: int


@dataclass(frozen=True)
class Unknown:
    """A record type this reader does not know (a newer kernel): kept, never interpreted."""

    seq: int
    time_ns: int
    tty: int
    type: int
    flags: int
    payload: bytes


Record = Open | Close | Data | Exec | Resize | Drop | Unknown


def crc32(*parts: bytes) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c


def decode_stream_header(raw: bytes) -> StreamHeader:
    if len(raw) < STREAM_HEADER.size:
        raise TtyLogError(
            f"tty log of {len(raw)} bytes is shorter than its {STREAM_HEADER.size}-byte header"
        )
    magic, version, header_len, record_max, start_ns, host_pid, crc = STREAM_HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise TtyLogError(f"not a tty log: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise TtyLogError(f"tty log version {version}; this reader knows version {VERSION}")
    if crc32(raw[:CRC_OFFSET]) != crc:
        raise TtyLogError("tty log stream header: CRC mismatch (corrupted)")
    if header_len < STREAM_HEADER.size or header_len > RECORD_MAX:
        raise TtyLogError(f"tty log header_len {header_len}: expected 32..{RECORD_MAX}")
    if not RECORD_HEADER.size < record_max <= 1 << 20:
        raise TtyLogError(f"tty log record_max {record_max}: expected 33..1048576")
    return StreamHeader(version, record_max, start_ns, host_pid)


def _payload_error(kind: str, offset: int, length: int, need: int) -> TtyLogError:
    return TtyLogError(
        f"{kind} record at byte {offset}: payload of {length} bytes, needs at least {need}"
    )


def decode_record(
    head: tuple[int, int, int, int, int, int, int], payload: bytes, offset: int
) -> Record:
    """One record from its unpacked header and its (CRC-checked) payload."""
    typ, flags, tty, seq, time_ns, _length, _crc = head
    if typ == RecordType.OPEN:
        if len(payload) < OPEN_PAYLOAD.size:
            raise _payload_error("OPEN", offset, len(payload), OPEN_PAYLOAD.size)
        major, minor, driver, subtype, link, pid, uid = OPEN_PAYLOAD.unpack_from(payload)
        name = payload[OPEN_PAYLOAD.size :].decode("ascii", "replace")
        return Open(seq, time_ns, tty, major, minor, driver, subtype, link, pid, uid, name)
    if typ == RecordType.CLOSE:
        return Close(seq, time_ns, tty)
    if typ == RecordType.DATA:
        return Data(seq, time_ns, tty, Direction(flags & 1), payload)
    if typ == RecordType.EXEC:
        if len(payload) < EXEC_PAYLOAD.size:
            raise _payload_error("EXEC", offset, len(payload), EXEC_PAYLOAD.size)
        pid, ppid, uid, euid, argc, flen, _ = EXEC_PAYLOAD.unpack_from(payload)
        end = EXEC_PAYLOAD.size + flen
        if end > len(payload):
            raise TtyLogError(
                f"EXEC record at byte {offset}: filename of {flen} bytes overruns its "
                f"{len(payload)}-byte payload"
            )
        args = payload[end:]
        if args and not args.endswith(b"\0"):
            raise TtyLogError(f"EXEC record at byte {offset}: argv does not end with a NUL")
        argv = tuple(args[:-1].split(b"\0")) if args else ()
        return Exec(
            seq,
            time_ns,
            tty,
            pid,
            ppid,
            uid,
            euid,
            argc,
            payload[EXEC_PAYLOAD.size : end],
            argv,
            bool(flags & 1),
        )
    if typ == RecordType.RESIZE:
        if len(payload) < RESIZE_PAYLOAD.size:
            raise _payload_error("RESIZE", offset, len(payload), RESIZE_PAYLOAD.size)
        return Resize(seq, time_ns, tty, *RESIZE_PAYLOAD.unpack_from(payload))
    if typ == RecordType.DROP:
        if len(payload) < DROP_PAYLOAD.size:
            raise _payload_error("DROP", offset, len(payload), DROP_PAYLOAD.size)
        return Drop(seq, time_ns, *DROP_PAYLOAD.unpack_from(payload))
    return Unknown(seq, time_ns, tty, typ, flags, payload)


class TtyLogDecoder:
    """Incremental decoder: `feed` bytes as they come, get the whole records they complete.

    Checks every bound and checksum; a record that fails raises TtyLogError naming its byte
    offset in the stream (the records before it were already returned). `close()` at the
    end of the stream reports a truncated record. It also keeps the loss accounting of the
    format: `missing` (sequence numbers never seen) and `reported_lost` (what DROP records
    said was lost); on an intact log the two are equal.
    """

    def __init__(self) -> None:
        self.header: StreamHeader | None = None
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._last_seq = 0
        self.records = 0
        self.missing = 0
        self.reported_lost = 0
        self.reported_lost_bytes = 0

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far (whole header and records)."""
        return self._offset

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        out: list[Record] = []
        if self.header is None:
            if len(self._buf) < STREAM_HEADER.size:
                if not MAGIC.startswith(bytes(self._buf[: len(MAGIC)])):
                    raise TtyLogError(f"not a tty log: starts with {bytes(self._buf[:8])!r}")
                return out
            self.header = decode_stream_header(bytes(self._buf[: STREAM_HEADER.size]))
            header_len = STREAM_HEADER.unpack_from(self._buf)[2]
            if len(self._buf) < header_len:
                self.header = None
                return out
            self._consume(header_len)
        limit = self.header.record_max
        while len(self._buf) >= RECORD_HEADER.size:
            head = RECORD_HEADER.unpack_from(self._buf)
            length = head[5]
            if crc32(bytes(self._buf[:CRC_OFFSET])) != head[6]:
                raise TtyLogError(f"record at byte {self._offset}: header CRC mismatch (corrupted)")
            if RECORD_HEADER.size + length > limit:
                raise TtyLogError(
                    f"record at byte {self._offset}: length {length} exceeds the "
                    f"{limit - RECORD_HEADER.size}-byte limit (corrupted)"
                )
            if len(self._buf) < RECORD_HEADER.size + length:
                break
            raw = bytes(self._buf[: RECORD_HEADER.size + length])
            payload = raw[RECORD_HEADER.size :]
            seq = head[3]
            if seq <= self._last_seq:
                raise TtyLogError(
                    f"record at byte {self._offset}: sequence {seq} after {self._last_seq} "
                    "(records out of order or repeated)"
                )
            rec = decode_record(head, payload, self._offset)
            self.missing += seq - self._last_seq - 1
            if isinstance(rec, Drop):
                self.reported_lost += rec.lost_records
                self.reported_lost_bytes += rec.lost_bytes
            self._last_seq = seq
            self.records += 1
            out.append(rec)
            self._consume(len(raw))
        return out

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def close(self) -> None:
        """The stream ended: anything left over is a truncated header or record."""
        if self._buf:
            what = "stream header" if self.header is None else "record"
            raise TtyLogError(
                f"tty log ends inside a {what} at byte {self._offset} "
                f"({len(self._buf)} bytes of it; truncated)"
            )
        if self.header is None:
            raise TtyLogError("empty tty log: no stream header")


def decode(data: bytes) -> tuple[StreamHeader, list[Record]]:
    """A whole log at once."""
    d = TtyLogDecoder()
    records = d.feed(data)
    d.close()
    assert d.header is not None
    return d.header, records


def read_file(path: Path, chunk: int = 1 << 16) -> Iterator[Record]:
    d = TtyLogDecoder()
    with path.open("rb") as f:
        while block := f.read(chunk):
            yield from d.feed(block)
    d.close()


def streams(records: Iterable[Record]) -> dict[tuple[int, Direction], bytes]:
    """The bytes of every (tty id, direction), concatenated in order."""
    out: dict[tuple[int, Direction], bytearray] = {}
    for r in records:
        if isinstance(r, Data):
            out.setdefault((r.tty, r.direction), bytearray()).extend(r.data)
    return {k: bytes(v) for k, v in out.items()}


def ttys(records: Iterable[Record]) -> dict[int, Open]:
    """Every tty the log opened, by id."""
    return {r.tty: r for r in records if isinstance(r, Open)}


class QuotaClassifier:
    """Which tty-log records count as output against a session-log quota.

    docs/formats/session-log.md, "Quota": DATA a screen shows (WRITE on a tty that is not a
    pty master, READ on a pty master) is output, like a line's OUTPUT; keystrokes (WRITE on a
    master, READ elsewhere), EXEC, OPEN, CLOSE, RESIZE and DROP are what the guest was seen to
    type and run. A record that cannot be read, or of a type this reader does not know, is
    output: nothing unreadable may use the room kept for the rest. Feed every record of a boot
    in order (OPEN records tell the masters apart); tty ids are never reused during a boot.
    """

    def __init__(self) -> None:
        self.masters: set[int] = set()

    def is_output(self, raw: bytes) -> bool:
        if len(raw) < RECORD_HEADER.size:
            return True
        typ, flags, tty, _seq, _time, length, crc = RECORD_HEADER.unpack_from(raw)
        if crc32(raw[:CRC_OFFSET]) != crc or length != len(raw) - RECORD_HEADER.size:
            return True
        if typ == RecordType.DATA:
            return bool(flags & 1) != (tty in self.masters)
        if typ == RecordType.OPEN:
            if length < OPEN_PAYLOAD.size:
                return True
            driver, subtype = OPEN_PAYLOAD.unpack_from(raw, RECORD_HEADER.size)[2:4]
            if driver == Driver.PTY and subtype == PTY_MASTER:
                self.masters.add(tty)
            else:
                self.masters.discard(tty)
            return False
        return typ not in (RecordType.CLOSE, RecordType.EXEC, RecordType.RESIZE, RecordType.DROP)


class TtyLogPipe:
    """The host end of a guest's tty log: a pipe, read in asyncio.

    `kernel_fd` goes to the kernel (inheritable, by number, with `kernel_arg`); close it in
    the host once the kernel has started (`kernel_started`). Bytes are appended to `raw` (if
    given) exactly as they came, and decoded records passed to `on_record`; a log the
    decoder rejects is still kept raw and the error is kept in `error`.
    """

    def __init__(
        self,
        raw: Path | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # more than the default 64 KiB: absorb bursts
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_inheritable(w, True)
        os.set_blocking(r, False)
        self.read_fd = r
        self.kernel_fd: int | None = w
        self.decoder = TtyLogDecoder()
        self.on_record = on_record
        self.error: TtyLogError | None = None
        self.bytes = 0
        self._raw: BinaryIO | None = raw.open("ab") if raw is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.eof = asyncio.Event()

    @property
    def kernel_arg(self) -> str:
        if self.kernel_fd is None:
            raise TtyLogError("the tty log pipe's kernel end was already closed")
        return f"tty_log_fd={self.kernel_fd}"

    def kernel_started(self) -> None:
        """The kernel holds its end now; the host's copy must go (EOF when the guest ends)."""
        if self.kernel_fd is not None:
            os.close(self.kernel_fd)
            self.kernel_fd = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.read_fd, self._readable)

    def _readable(self) -> None:
        self.drain()

    def drain(self) -> None:
        """Read everything the pipe holds now."""
        while True:
            try:
                data = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self._stop_reading()
                self.eof.set()
                return
            self.bytes += len(data)
            if self._raw is not None:
                self._raw.write(data)
            if self.error is None:
                try:
                    records = self.decoder.feed(data)
                except TtyLogError as e:
                    self.error = e
                    records = []
                if self.on_record is not None:
                    for rec in records:
                        self.on_record(rec)

    def _stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.read_fd)
            self._loop = None

    async def stop(self) -> None:
        """Read what is left, stop, close everything (the guest may still be running)."""
        self.kernel_started()
        if self.read_fd >= 0:
            self.drain()
            self._stop_reading()
            os.close(self.read_fd)
            self.read_fd = -1
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    async def __aenter__(self) -> "TtyLogPipe":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class KernelStats:
    """The kernel's own counters, as `mconsole ttylog` answers them (docs/formats/ttylog.md)."""

    fd: int
    state: str  # "on", "off" or "stopped:ERRNO"
    records: int
    bytes: int
    lost_records: int
    lost_bytes: int

    @property
    def stopped_errno(self) -> int | None:
        return int(self.state.split(":", 1)[1]) if self.state.startswith("stopped:") else None


_STATS_KEYS = ("fd", "state", "records", "bytes", "lost_records", "lost_bytes")


def parse_stats(text: str) -> KernelStats:
    """`fd=3 state=on records=R bytes=B lost_records=L lost_bytes=M` -> KernelStats."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if set(fields) != set(_STATS_KEYS):
        raise TtyLogError(f"mconsole ttylog answered {text!r}; expected {' '.join(_STATS_KEYS)}")
    try:
        numbers = {k: int(fields[k]) for k in _STATS_KEYS if k != "state"}
    except ValueError:
        raise TtyLogError(f"mconsole ttylog answered {text!r}: a counter is not a number") from None
    state = fields["state"]
    if state not in ("on", "off") and not re.fullmatch(r"stopped:\d+", state):
        raise TtyLogError(f"mconsole ttylog state {state!r}: expected on, off or stopped:ERRNO")
    return KernelStats(state=state, **numbers)
