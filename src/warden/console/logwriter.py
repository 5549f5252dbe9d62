"""Writing session logs without slowing the guests or the event loop.

The event loop only timestamps and queues: `SessionLog.output()` (called by daemon/lines.py
for every chunk a guest prints) appends a tuple to a deque and wakes the writer thread. The
thread encodes, chains the MACs, applies the quota (warden.console.logquota) and issues one
write(2) per file per batch; a second thread compresses closed files. hashlib and os.write
release the GIL, so the loop keeps running while a batch is hashed and written. The thread also
notes every part's opening and closing in the logs manifest (warden.console.manifest).

Both threads end by themselves: when the daemon has asked them to stop (or its main thread is
gone) and no file is open and nothing is queued; they restart if work arrives again.
"""

import collections
import contextlib
import errno
import fcntl
import gzip
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.console import logstore
from warden.console import manifest as mf
from warden.console import sessionlog as sl
from warden.console.logquota import (
    RESERVE_MAX,
    DiskRoom,
    GuestUsage,
    Tier,
    reserve_for,
    resume_margin,
)
from warden.honeypot.ttylog import QuotaClassifier

log = logging.getLogger("warden.sessionlog")

MAX_QUEUED = 64 << 20  # output bytes queued for the writer before output is dropped (counted)
QUEUE_RESERVE = 8 << 20  # more for input and tty-log records: they are not dropped first
DROP_NOTE_EVERY = 10.0  # seconds between "dropped" events while dropping goes on
IDLE_CHECK = 0.5

__all__ = ["RESERVE_MAX", "GuestUsage", "LogWriter", "SessionLog", "reserve_for"]


@dataclass(eq=False)
class _File:
    """A log file being written: owned by the writer thread."""

    path: Path
    fd: int
    usage: GuestUsage
    disk: DiskRoom
    manifest: mf.ManifestWriter
    line: str
    boot: int
    part: int
    seq: int = 0  # last record written to the file
    mac: bytes = b""
    size: int = 0  # bytes in the file
    pending_seq: int = 0  # last record encoded (written or in buf)
    pending_mac: bytes = b""
    buf: list[bytes] = field(default_factory=list)  # pieces waiting for writev
    buf_bytes: int = 0
    # what the pieces in buf hold (notes apart): added to the totals once written
    batch_records: int = 0
    batch_out: int = 0
    batch_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    dropped_records: int = 0
    drop_tier: Tier | None = None  # the lowest tier dropped since dropping began
    drop_reason: str = ""
    last_note: float = 0.0
    # writes that failed and were taken back, not yet told in a write-failed event
    failed_records: int = 0
    failed_out: int = 0
    failed_in: int = 0
    failed_attempts: int = 0
    failed_first_us: int = 0
    failed_last_us: int = 0
    failed_error: str = ""
    telling: bool = False  # this batch starts with the write-failed event

    def chain_from(self, seq: int, mac: bytes, size: int) -> None:
        self.seq = self.pending_seq = seq
        self.mac = self.pending_mac = mac
        self.size = size


class SessionLog:
    """One line's log for one boot: the LineLog daemon/lines.py writes to.

    Every method runs on the event loop and only queues; `file` belongs to the writer thread.
    """

    def __init__(
        self,
        writer: "LogWriter",
        machine: str,
        line: str,
        boot: int,
        reattach: bool,
        usage: Callable[[], GuestUsage],
    ):
        self.writer = writer
        self.machine = machine
        self.line = line
        self.boot = boot
        self.reattach = reattach
        self.usage_of = usage
        self.file: _File | None = None
        self.classifier: QuotaClassifier | None = None  # the writer thread's, for TTYLOG
        self._suspend = False
        self._end_reason = ""
        self.closed = False
        writer.submit(self, "open", logstore.now_us(), None)

    def output(self, data: bytes) -> None:
        if not self.closed:
            self.writer.submit(self, "out", logstore.now_us(), data)

    def input(self, data: bytes, user: str) -> None:
        if not self.closed:
            self.writer.submit(self, "in", logstore.now_us(), (user, data))

    def event(self, kind: str, **fields: object) -> None:
        if self.closed:
            return
        if kind == "daemon-detach":
            self._suspend = True
        if kind == "boot-end":
            self._end_reason = str(fields.get("reason", ""))
        self.writer.submit(self, "event", logstore.now_us(), (kind, fields))

    def record(self, rtype: int, payload: bytes, time_us: int | None = None) -> None:
        """Any other record type: for the honeypot, sl.TTYLOG with one kernel tty-log record
        verbatim (docs/formats/session-log.md). TTYLOG records count as output or as guest
        input by what they hold (logquota.Tier); other types as guest input."""
        if not self.closed:
            t = time_us if time_us is not None else logstore.now_us()
            self.writer.submit(self, "rec", t, (rtype, payload))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.submit(
                self, "close", logstore.now_us(), (self._suspend, self._end_reason or "closed")
            )


Item = tuple[Any, str, int, Any]  # (SessionLog, a ThreadLog or None; op; time_us; argument)


class ThreadLog:
    """Another kind of log file the writer thread owns (warden.console.kernellog's plain
    kernel log): the thread hands it its queued items in order."""

    def in_thread(self, writer: "LogWriter", op: str, t: int, arg: Any) -> None:
        raise NotImplementedError

    def flush_in_thread(self, writer: "LogWriter") -> None:
        """The end of a batch."""


class _Worker:
    """A thread that runs `handle` on queued items and ends when idle and told to (or orphaned)."""

    def __init__(self, name: str):
        self.name = name
        self.items: collections.deque[Any] = collections.deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.lock = threading.Lock()

    def busy(self) -> bool:
        return False

    def handle(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def put(self, item: Any) -> None:
        with self.lock:  # against a thread deciding to end right now (see _run)
            self.items.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=False)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(IDLE_CHECK)
            self.wake.clear()
            batch: list[Any] = []
            barriers: list[threading.Event] = []
            while self.items:
                item = self.items.popleft()
                (barriers if isinstance(item, threading.Event) else batch).append(item)
            if batch:
                try:
                    self.handle(batch)
                except Exception:  # never let one bad item kill the thread
                    log.exception("%s: batch failed", self.name)
            for b in barriers:
                b.set()
            if batch or barriers:
                continue
            orphaned = not threading.main_thread().is_alive()
            if (self.stopping or orphaned) and (orphaned or not self.busy()):
                with self.lock:
                    if self.items:
                        continue  # put() saw a live thread: this one must take it
                    self.thread = None
                    return

    def sync(self, timeout: float) -> bool:
        """Wait until everything queued before this call is handled."""
        done = threading.Event()
        self.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        t = self.thread
        if t is not None:
            t.join(timeout)


class Compressor(_Worker):
    def __init__(self) -> None:
        super().__init__("wlog-compress")

    def handle(self, batch: list[Any]) -> None:
        for path, usage in batch:
            compress(path, usage)


def compress(path: Path, usage: GuestUsage | None) -> None:
    """FILE -> FILE.gz (docs: tmp, fsync, rename, fsync dir, unlink)."""
    gz = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        raw = path.stat().st_size
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            with gzip.GzipFile(filename="", mode="wb", fileobj=dst, compresslevel=6, mtime=0) as z:
                while chunk := src.read(1 << 20):
                    z.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(tmp, gz)
        _fsync_dir(path.parent)
        path.unlink()
        if usage is not None:
            usage.add(gz.stat().st_size - raw)
    except OSError as e:
        log.warning("%s: compression failed (%s); left uncompressed", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogWriter(_Worker):
    """The one writer thread of a daemon (see the module docstring)."""

    def __init__(self, key: bytes, layout_machines: Path):
        super().__init__("wlog-writer")
        self.key = key
        self.key_id = sl.key_id(key)
        self.machines = layout_machines
        self.compressor = Compressor()
        self.open_logs: set[SessionLog] = set()
        self.open_other: set[ThreadLog] = set()  # kept by the ThreadLogs themselves
        self.queued = 0
        self.qlock = threading.Lock()
        self.hostname = socket.gethostname()
        self._disks: dict[int, DiskRoom] = {}  # by st_dev
        self._manifests: dict[Path, mf.ManifestWriter] = {}

    def busy(self) -> bool:
        return bool(self.open_logs or self.open_other)

    # ---- loop side
    def submit(self, log_: Any, op: str, t: int, arg: Any) -> None:
        n = 0
        room = MAX_QUEUED
        if op in ("out", "plain"):
            n = len(arg)
        elif op == "in":
            n = len(arg[1])
            room += QUEUE_RESERVE
        elif op == "rec":
            n = len(arg[1])
            room += QUEUE_RESERVE
        if n:
            with self.qlock:
                if self.queued + n > room:
                    op, arg = "lost", (op, n)
                    n = 0
                else:
                    self.queued += n
        self.put((log_, op, t, arg, n))

    def finalize_stale(self) -> None:
        """Close (and compress) logs no daemon writes any more; run at daemon start."""
        self.put((None, "stale", 0, None, 0))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written and every closed file compressed."""
        return self.sync(timeout) and self.compressor.sync(timeout)

    def stop(self) -> None:
        super().stop()
        self.compressor.stop()

    # ---- thread side: shared with ThreadLogs
    def disk_for(self, directory: Path) -> DiskRoom:
        dev = os.stat(directory).st_dev
        d = self._disks.get(dev)
        if d is None:
            d = self._disks[dev] = DiskRoom(directory)
        d.path = directory  # the newest directory there: an older one may have been archived
        return d

    def manifest_for(self, directory: Path, machine: str) -> mf.ManifestWriter:
        m = self._manifests.get(directory)
        if m is None:
            m = self._manifests[directory] = mf.ManifestWriter(directory, self.key, machine)
        return m

    # ---- thread side
    def handle(self, batch: list[Any]) -> None:
        for d in self._disks.values():
            d.new_batch()
        touched: dict[_File, None] = {}
        others: dict[ThreadLog, None] = {}
        # Output chunks of one file that follow each other in a batch become one record (up
        # to 64 KiB, stamped with the first chunk's time): fewer headers, MACs and Python.
        outs: dict[_File, tuple[int, list[bytes], int]] = {}
        done = 0
        for lg, op, t, arg, n in batch:
            done += n
            if op == "stale":
                self._out_all(outs)
                self._flush_all(touched)
                self._stale()
                continue
            assert lg is not None
            if isinstance(lg, ThreadLog):
                lg.in_thread(self, op, t, arg)
                others[lg] = None
                continue
            if op == "open":
                self._open(lg, t)
                continue
            f = lg.file
            if f is None:
                continue  # could not be opened: already reported
            touched[f] = None
            if op == "out":
                acc = outs.get(f)
                if acc is not None and acc[2] + len(arg) <= sl.WRITE_PAYLOAD:
                    acc[1].append(arg)
                    outs[f] = (acc[0], acc[1], acc[2] + len(arg))
                else:
                    self._out(outs, f)
                    outs[f] = (t, [arg], len(arg))
                continue
            self._out(outs, f)  # keep the order of records
            if op == "in":
                self._data(f, sl.INPUT, t, arg[1], arg[0])
            elif op == "event":
                kind, fields = arg
                tier = Tier.CLOSING if kind == "daemon-detach" else Tier.HOST
                self._record(f, sl.EVENT, t, sl.event_payload(kind, fields), tier)
            elif op == "rec":
                self._other(lg, f, t, arg[0], arg[1])
            elif op == "lost":  # the thread fell MAX_QUEUED behind: never reached it
                what, count = arg
                if what == "in":
                    self._count_drop(f, t, Tier.HOST, 0, count, "queue")
                else:
                    self._count_drop(f, t, Tier.OUTPUT, count, 0, "queue")
            elif op == "close":
                touched.pop(f, None)
                lg.file = None
                self.open_logs.discard(lg)
                self._close(f, t, suspend=arg[0], reason=arg[1])
        self._out_all(outs)
        self._flush_all(touched)
        for other in others:
            other.flush_in_thread(self)
        if done:
            with self.qlock:
                self.queued -= done

    def _out(self, outs: dict[_File, tuple[int, list[bytes], int]], f: _File) -> None:
        acc = outs.pop(f, None)
        if acc is None:
            return
        t, pieces, n = acc
        if n > sl.WRITE_PAYLOAD:  # a single chunk bigger than a record
            self._data(f, sl.OUTPUT, t, b"".join(pieces), "")
        else:
            self._record(f, sl.OUTPUT, t, pieces, Tier.OUTPUT, out=n)

    def _out_all(self, outs: dict[_File, tuple[int, list[bytes], int]]) -> None:
        for f in list(outs):
            self._out(outs, f)

    def _flush_all(self, touched: dict[_File, None]) -> None:
        for f in touched:
            self._flush(f)
        touched.clear()

    # records
    def _data(self, f: _File, rtype: int, t: int, data: bytes, user: str) -> None:
        for i in range(0, len(data), sl.WRITE_PAYLOAD):
            chunk = data[i : i + sl.WRITE_PAYLOAD]
            if rtype == sl.INPUT:
                payload = sl.input_payload(user, chunk)
                self._record(f, rtype, t, payload, Tier.HOST, inn=len(chunk))
            else:
                self._record(f, rtype, t, chunk, Tier.OUTPUT, out=len(chunk))

    def _other(self, lg: SessionLog, f: _File, t: int, rtype: int, payload: bytes) -> None:
        """A record of another type (TTYLOG): output or guest input by what it holds."""
        tier = Tier.GUEST
        if rtype == sl.TTYLOG:
            if lg.classifier is None:
                lg.classifier = self._classifier(lg, f)
            if lg.classifier.is_output(payload):
                tier = Tier.OUTPUT
        for i in range(0, max(1, len(payload)), sl.WRITE_PAYLOAD):
            piece = payload[i : i + sl.WRITE_PAYLOAD]
            if tier is Tier.OUTPUT:
                self._record(f, rtype, t, piece, tier, out=len(piece))
            else:
                self._record(f, rtype, t, piece, tier, inn=len(piece))

    def _classifier(self, lg: SessionLog, f: _File) -> QuotaClassifier:
        """A new one; after a daemon restart, taught the OPEN records this boot already logged
        (in every part of it), so that it still knows which ttys are pty masters."""
        c = QuotaClassifier()
        if not lg.reattach:
            return c
        for ref in logstore.logs_in(lg.machine, f.path.parent, False):
            if ref.line != lg.line or ref.boot != lg.boot:
                continue
            try:
                with logstore.reading(ref, None) as reader:
                    for r in reader:
                        if r.type == sl.TTYLOG:
                            c.is_output(r.payload)
            except (sl.LogFormatError, OSError, EOFError) as e:
                log.warning("%s: %s; its ttys stay unknown (their bytes count as output)", ref, e)
        return c

    def _record(
        self,
        f: _File,
        rtype: int,
        t: int,
        payload: bytes | list[bytes],
        tier: Tier,
        out: int = 0,
        inn: int = 0,
    ) -> bool:
        n = len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)
        size = sl.RECORD_HEADER.size + n + sl.MAC_LEN
        if tier is not Tier.CLOSING:
            reason = ""
            # While dropping, a record of a class that was dropped needs a margin to resume.
            margin = 0
            if f.drop_tier is not None and tier <= f.drop_tier:
                margin = resume_margin(f.usage.quota)
            if size + margin > f.usage.room(tier):
                reason = "quota"
            elif not f.disk.fits(tier, size + margin):
                reason = "disk"
            if reason:
                self._count_drop(f, t, tier, out, inn, reason)
                return False
        if f.drop_tier is not None and tier <= f.drop_tier:
            f.drop_tier = None
            self._note_drop(f, t, "resumed")
        self._append(f, rtype, t, payload)
        f.batch_records += 1
        f.batch_out += out
        f.batch_in += inn
        return True

    def _append(self, f: _File, rtype: int, t: int, payload: bytes | list[bytes]) -> None:
        if f.failed_attempts and not f.buf and not f.telling:
            f.telling = True
            self._note_failed(f, t)  # the first record once writing works again
        pieces = [payload] if isinstance(payload, bytes) else payload
        f.pending_seq += 1
        head, f.pending_mac = sl.record_parts(
            self.key, f.pending_mac, rtype, f.pending_seq, t, pieces
        )
        # No copy of the payload until the kernel's: writev takes the pieces as they are.
        f.buf.append(head)
        f.buf += pieces
        f.buf.append(f.pending_mac)
        size = len(head) + sum(len(p) for p in pieces) + len(f.pending_mac)
        f.buf_bytes += size
        f.usage.add(size)
        f.disk.took(size)

    def _count_drop(self, f: _File, t: int, tier: Tier, out: int, inn: int, reason: str) -> None:
        f.dropped_out += out
        f.dropped_in += inn
        f.dropped_records += 1
        f.drop_reason = reason
        if f.drop_tier is None:
            f.drop_tier = tier
            self._note_drop(f, t, "dropping")
        else:
            f.drop_tier = min(f.drop_tier, tier)
            if time.monotonic() - f.last_note >= DROP_NOTE_EVERY:
                self._note_drop(f, t, "dropping", periodic=True)

    def _note_drop(self, f: _File, t: int, state: str, periodic: bool = False) -> None:
        f.last_note = time.monotonic()
        payload = sl.event_payload(
            "dropped",
            {
                "bytes_out": f.dropped_out,
                "bytes_in": f.dropped_in,
                "records": f.dropped_records,
                "quota": f.usage.quota,
                "state": state,
                "reason": f.drop_reason,
            },
        )
        # A change of state is always told; while dropping goes on, only if there is room.
        size = sl.RECORD_HEADER.size + len(payload) + sl.MAC_LEN
        if not periodic or (size <= f.usage.room(Tier.HOST) and f.disk.fits(Tier.HOST, size)):
            self._append(f, sl.EVENT, t, payload)

    def _note_failed(self, f: _File, t: int) -> None:
        payload = sl.event_payload(
            "write-failed",
            {
                "error": f.failed_error,
                "first_us": f.failed_first_us,
                "last_us": f.failed_last_us,
                "records": f.failed_records,
                "bytes_out": f.failed_out,
                "bytes_in": f.failed_in,
                "attempts": f.failed_attempts,
            },
        )
        self._append(f, sl.EVENT, t, payload)

    def _flush(self, f: _File) -> None:
        if not f.buf:
            return
        pieces, total = f.buf, f.buf_bytes
        f.buf, f.buf_bytes = [], 0
        records, out, inn = f.batch_records, f.batch_out, f.batch_in
        f.batch_records = f.batch_out = f.batch_in = 0
        try:
            _write_all(f.fd, pieces)
        except OSError as e:
            # Disk full or I/O error: put the file back to its last whole record, so the
            # chain stays valid; count what was lost, to tell it once writing works again.
            f.usage.add(-total)
            f.disk.took(-total)
            f.disk.invalidate()
            with contextlib.suppress(OSError):
                os.ftruncate(f.fd, f.size)
            f.pending_seq, f.pending_mac = f.seq, f.mac
            f.telling = False  # taken back with the rest: told with the next batch
            now = logstore.now_us()
            if not f.failed_attempts:
                f.failed_first_us = now
                log.warning(
                    "%s: writing failed (%s) after record %d: %d records (%d bytes out, "
                    "%d in) taken back; counting until writing works again",
                    f.path,
                    e.strerror or e,
                    f.seq,
                    records,
                    out,
                    inn,
                )
            f.failed_attempts += 1
            f.failed_last_us = now
            f.failed_error = e.strerror or str(e)
            f.failed_records += records
            f.failed_out += out
            f.failed_in += inn
            f.dropped_records += records
            f.dropped_out += out
            f.dropped_in += inn
            return
        if f.telling:
            log.warning("%s: writing works again; a write-failed event says what was lost", f.path)
            f.telling = False
            f.failed_attempts = f.failed_records = f.failed_out = f.failed_in = 0
        f.size += total
        f.seq, f.mac = f.pending_seq, f.pending_mac
        f.bytes_out += out
        f.bytes_in += inn

    def _note_manifest(self, f: _File, kind: str, t: int, sync: bool, **fields: Any) -> bool:
        try:
            n = f.manifest.note(kind, f.line, f.boot, f.part, t, sync, **fields)
        except OSError as e:
            log.warning("%s: cannot note %s in %s: %s", f.path, kind, f.manifest.path, e)
            return False
        f.usage.add(n)
        return True

    # opening and closing
    def _open(self, lg: SessionLog, t: int) -> None:
        d = self.machines / lg.machine / "logs"
        try:
            d.mkdir(parents=True, exist_ok=True)
            usage = lg.usage_of()
            f = self._continue(lg, d, usage, t) if lg.reattach else None
            if f is None:
                f = self._create(lg, d, usage, t)
        except OSError as e:
            log.error(
                "%s %s boot %d: cannot open its session log: %s", lg.machine, lg.line, lg.boot, e
            )
            return
        lg.file = f
        self.open_logs.add(lg)

    def _new_file(self, path: Path, fd: int, usage: GuestUsage, machine: str) -> _File:
        parsed = logstore.parse_name(path)
        assert parsed is not None
        line, boot, part = parsed
        d = path.parent
        return _File(
            path,
            fd,
            usage,
            self.disk_for(d),
            self.manifest_for(d, machine),
            line,
            boot,
            part,
        )

    def _create(self, lg: SessionLog, d: Path, usage: GuestUsage, t: int) -> _File:
        part = 1
        while True:
            path = d / logstore.log_name(lg.line, lg.boot, part)
            if not path.with_name(path.name + ".gz").exists():
                try:
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
                    fd = os.open(path, flags, 0o600)
                    break
                except FileExistsError:
                    pass
            part += 1
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        meta = {
            "format": "warden-session-log",
            "machine": lg.machine,
            "line": lg.line,
            "boot": lg.boot,
            "part": part,
            "created_us": t,
            "key_id": self.key_id,
            "host": self.hostname,
            "daemon_pid": os.getpid(),
            "manifest": 1,
        }
        head, mac0 = sl.encode_header(meta, self.key)
        f = self._new_file(path, fd, usage, lg.machine)
        f.chain_from(0, mac0, 0)
        f.buf.append(head)
        f.buf_bytes += len(head)
        usage.add(len(head))
        f.disk.took(len(head))
        event = sl.event_payload("open", {"daemon_pid": os.getpid()})
        self._append(f, sl.EVENT, t, event)
        self._flush(f)
        if f.failed_attempts:  # not even the header could be written: no file at all
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise OSError(errno.ENOSPC, f"cannot write the header of {path}: {f.failed_error}")
        self._note_manifest(f, "open", t, False, mac0=mac0.hex())
        return f

    def _continue(self, lg: SessionLog, d: Path, usage: GuestUsage, t: int) -> _File | None:
        """Re-open this boot's last part after a daemon restart; None: start a new part."""
        parts = [
            r
            for r in logstore.logs_in(lg.machine, d, False)
            if r.line == lg.line and r.boot == lg.boot
        ]
        if not parts or parts[-1].compressed:
            return None
        return self._resume(parts[-1].path, usage, t, lg.machine)

    def _resume(self, path: Path, usage: GuestUsage, t: int, machine: str) -> _File | None:
        """Open `path`, check its chain, cut a partial last record, note the recovery."""
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = self._scan(path)
        except (OSError, sl.LogFormatError) as e:
            log.warning("%s: cannot continue it (%s); starting a new part", path, e)
            os.close(fd)
            return None
        if st is None or st.problem or st.ended:
            why = "written with another key" if st is None else st.problem or "already ended"
            log.warning("%s: not continued (%s); starting a new part", path, why)
            os.close(fd)
            return None
        f = self._new_file(path, fd, usage, machine)
        # Noted before the file changes: a part that grows past a detach always has a resume.
        self._note_manifest(f, "resume", t, True, from_seq=st.last_seq)
        discarded = os.fstat(fd).st_size - st.good_end
        if discarded:
            os.ftruncate(fd, st.good_end)
            usage.add(-discarded)
        f.chain_from(st.last_seq, st.last_mac, st.good_end)
        was = "suspended" if st.last_kind == "daemon-detach" else "cut"
        event = {
            "last_seq": st.last_seq,
            "discarded_bytes": discarded,
            "was": was,
            "daemon_pid": os.getpid(),
        }
        self._append(f, sl.EVENT, t, sl.event_payload("recovered", event))
        self._flush(f)
        return f

    def _scan(self, path: Path) -> sl.ReadState | None:
        with sl.open_raw(path) as fh:
            r = sl.LogReader(fh, self.key, str(path))
            if r.header.key_id != self.key_id:
                return None
            for _ in r:
                pass
            return r.state

    def _close(self, f: _File, t: int, suspend: bool, reason: str) -> None:
        if not suspend:
            if f.dropped_records:
                self._note_drop(f, t, "closing")
            self._end(f, t, reason)
        self._flush(f)
        if not suspend:
            with contextlib.suppress(OSError):
                os.fsync(f.fd)
        os.close(f.fd)
        if f.failed_attempts:
            log.warning("%s: closed without its last records (writing failed)", f.path)
        elif f.seq:
            kind = "detach" if suspend else "end"
            self._note_manifest(f, kind, t, True, seq=f.seq, mac=f.mac.hex())
        if not suspend:
            self.compressor.put((f.path, f.usage))

    def _end(self, f: _File, t: int, reason: str, **extra: object) -> None:
        payload = sl.event_payload(
            "end",
            {
                "reason": reason,
                "records": f.pending_seq + 1,
                "bytes_out": f.bytes_out + f.batch_out,
                "bytes_in": f.bytes_in + f.batch_in,
                "dropped_bytes": f.dropped_out + f.dropped_in,
                **extra,
            },
        )
        self._append(f, sl.END, t, payload)

    # logs no daemon will continue
    def _stale(self) -> None:
        ours = {lg.file.path for lg in self.open_logs if lg.file is not None}
        if not self.machines.is_dir():
            return
        for mdir in sorted(self.machines.iterdir()):
            d = mdir / "logs"
            if not d.is_dir():
                continue
            for p in sorted(d.glob("*.wlog.gz.tmp")):
                with contextlib.suppress(OSError):
                    p.unlink()
            for p in sorted(d.glob("*.wlog")):
                if p in ours or logstore.parse_name(p) is None:
                    continue
                if p.with_name(p.name + ".gz").exists():
                    with contextlib.suppress(OSError):
                        p.unlink()  # compressed before a crash, not yet removed
                    continue
                try:
                    self._finish(p, mdir.name)
                except (OSError, sl.LogFormatError) as e:
                    log.warning("%s: left as it is: %s", p, e)

    def _finish(self, path: Path, machine: str) -> None:
        """Close a log whose guest ended while no daemon ran (or that a crash left open)."""
        try:
            st = self._scan(path)
        except sl.LogFormatError as e:
            log.warning("%s: %s; left as it is", path, e)
            return
        if st is None or st.problem:
            log.warning("%s: %s; left as it is", path, st.problem if st else "another key")
            return
        if not st.ended:
            # No quota here: closing records are tiny and the file must say how it ended.
            t = logstore.now_us()
            f = self._resume(path, GuestUsage(path.parent, 1 << 62), t, machine)
            if f is None:
                return
            reason = "no daemon re-opened this line: the guest ended while no daemon ran"
            self._append(f, sl.EVENT, t, sl.event_payload("boot-end", {"reason": reason}))
            self._end(f, t, reason, recovered=True)
            self._flush(f)
            os.fsync(f.fd)
            os.close(f.fd)
            if not f.failed_attempts:
                self._note_manifest(f, "end", t, True, seq=f.seq, mac=f.mac.hex())
        self.compressor.put((path, None))


IOV_MAX = 1024


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """writev every piece, in order, whatever the kernel takes per call."""
    i = 0
    while i < len(pieces):
        group = pieces[i : i + IOV_MAX]
        n = os.writev(fd, group)
        want = sum(len(p) for p in group)
        if n < want:  # a short write (rare on files): finish this group byte by byte
            rest = memoryview(b"".join(group))[n:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        i += IOV_MAX
