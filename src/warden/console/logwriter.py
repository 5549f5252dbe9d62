"""Writing session logs without slowing the guests or the event loop.

The event loop only timestamps and queues: `SessionLog.output()` (called by daemon/lines.py
for every chunk a guest prints) appends a tuple to a deque and wakes the writer thread. The
thread encodes, chains the MACs, applies the quota and issues one write(2) per file per batch;
a second thread compresses closed files. hashlib and os.write release the GIL, so the loop
keeps running while a batch is hashed and written.

Both threads end by themselves: when the daemon has asked them to stop (or its main thread is
gone) and no file is open and nothing is queued; they restart if work arrives again.
"""

import collections
import contextlib
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
from warden.console import sessionlog as sl

log = logging.getLogger("warden.sessionlog")

MAX_QUEUED = 64 << 20  # bytes queued for the writer before data is dropped (and counted)
DROP_NOTE_EVERY = 10.0  # seconds between "dropped" events while dropping goes on
RESERVE_MAX = 256 << 10
IDLE_CHECK = 0.5


def reserve_for(quota: int) -> int:
    """Room kept for events and input once output is dropped (docs: quota/16, ≤ 256 KiB)."""
    return min(quota // 16, RESERVE_MAX)


class GuestUsage:
    """Bytes on disk of one guest's session logs, against its quota (all lines, all boots)."""

    def __init__(self, logs_dir: Path, quota: int):
        self.dir = logs_dir
        self.quota = quota
        self.used = logstore.usage(logs_dir)
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.used += n

    def room(self, rtype: int) -> int:
        limit = self.quota - (reserve_for(self.quota) if rtype == sl.OUTPUT else 0)
        return limit - self.used


@dataclass(eq=False)
class _File:
    """A log file being written: owned by the writer thread."""

    path: Path
    fd: int
    usage: GuestUsage
    seq: int = 0  # last record written to the file
    mac: bytes = b""
    size: int = 0  # bytes in the file
    pending_seq: int = 0  # last record encoded (written or in buf)
    pending_mac: bytes = b""
    buf: list[bytes] = field(default_factory=list)  # pieces waiting for writev
    buf_bytes: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    dropped_records: int = 0
    dropping: bool = False
    last_note: float = 0.0
    failed: bool = False

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
        verbatim (docs/formats/session-log.md). Counted against the quota like events."""
        if not self.closed:
            t = time_us if time_us is not None else logstore.now_us()
            self.writer.submit(self, "rec", t, (rtype, payload))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.submit(
                self, "close", logstore.now_us(), (self._suspend, self._end_reason or "closed")
            )


Item = tuple[SessionLog | None, str, int, Any]


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
        self.queued = 0
        self.qlock = threading.Lock()
        self.hostname = socket.gethostname()

    def busy(self) -> bool:
        return bool(self.open_logs)

    # ---- loop side
    def submit(self, log_: SessionLog | None, op: str, t: int, arg: Any) -> None:
        n = 0
        if op == "out":
            n = len(arg)
        elif op == "in":
            n = len(arg[1])
        if n:
            with self.qlock:
                if self.queued + n > MAX_QUEUED:
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

    # ---- thread side
    def handle(self, batch: list[Any]) -> None:
        touched: dict[_File, None] = {}
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
                self._record(f, sl.EVENT, t, sl.event_payload(kind, fields))
            elif op == "rec":
                for i in range(0, max(1, len(arg[1])), sl.WRITE_PAYLOAD):
                    self._record(f, arg[0], t, arg[1][i : i + sl.WRITE_PAYLOAD])
            elif op == "lost":  # the thread fell MAX_QUEUED behind: never reached it
                self._count_drop(f, t, sl.OUTPUT if arg[0] == "out" else sl.INPUT, arg[1])
            elif op == "close":
                touched.pop(f, None)
                lg.file = None
                self.open_logs.discard(lg)
                self._close(f, t, suspend=arg[0], reason=arg[1])
        self._out_all(outs)
        self._flush_all(touched)
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
        elif self._record(f, sl.OUTPUT, t, pieces, count=n):
            f.bytes_out += n

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
            payload = sl.input_payload(user, chunk) if rtype == sl.INPUT else chunk
            if self._record(f, rtype, t, payload, count=len(chunk)):
                if rtype == sl.OUTPUT:
                    f.bytes_out += len(chunk)
                else:
                    f.bytes_in += len(chunk)

    def _record(
        self, f: _File, rtype: int, t: int, payload: bytes | list[bytes], count: int = 0
    ) -> bool:
        n = len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)
        size = sl.RECORD_HEADER.size + n + sl.MAC_LEN
        if size > f.usage.room(rtype):
            self._count_drop(f, t, rtype, count)
            return False
        if f.dropping and rtype == sl.OUTPUT:
            f.dropping = False
            self._note_drop(f, t, "resumed")
        self._append(f, rtype, t, payload)
        return True

    def _append(self, f: _File, rtype: int, t: int, payload: bytes | list[bytes]) -> None:
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

    def _count_drop(self, f: _File, t: int, rtype: int, n: int) -> None:
        if rtype == sl.OUTPUT:
            f.dropped_out += n
        elif rtype == sl.INPUT:
            f.dropped_in += n
        f.dropped_records += 1
        if not f.dropping:
            f.dropping = True
            self._note_drop(f, t, "dropping")
        elif time.monotonic() - f.last_note >= DROP_NOTE_EVERY:
            self._note_drop(f, t, "dropping")

    def _note_drop(self, f: _File, t: int, state: str) -> None:
        f.last_note = time.monotonic()
        payload = sl.event_payload(
            "dropped",
            {
                "bytes_out": f.dropped_out,
                "bytes_in": f.dropped_in,
                "records": f.dropped_records,
                "quota": f.usage.quota,
                "state": state,
            },
        )
        if sl.RECORD_HEADER.size + len(payload) + sl.MAC_LEN <= f.usage.room(sl.EVENT):
            self._append(f, sl.EVENT, t, payload)

    def _flush(self, f: _File) -> None:
        if not f.buf:
            return
        pieces, total = f.buf, f.buf_bytes
        f.buf, f.buf_bytes = [], 0
        try:
            _write_all(f.fd, pieces)
        except OSError as e:
            # Disk full or I/O error: put the file back to its last whole record, so the
            # chain stays valid, and count what was lost.
            f.usage.add(-total)
            with contextlib.suppress(OSError):
                os.ftruncate(f.fd, f.size)
            f.pending_seq, f.pending_mac = f.seq, f.mac
            f.dropped_records += 1
            if not f.failed:
                f.failed = True
                log.warning("%s: writing failed: %s; records dropped", f.path, e)
            return
        f.size += total
        f.seq, f.mac = f.pending_seq, f.pending_mac
        f.failed = False

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
        }
        head, mac0 = sl.encode_header(meta, self.key)
        f = _File(path, fd, usage)
        f.chain_from(0, mac0, 0)
        f.buf.append(head)
        f.buf_bytes += len(head)
        usage.add(len(head))
        event = sl.event_payload("open", {"daemon_pid": os.getpid()})
        self._append(f, sl.EVENT, t, event)
        self._flush(f)
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
        return self._resume(parts[-1].path, usage, t)

    def _resume(self, path: Path, usage: GuestUsage, t: int) -> _File | None:
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
        discarded = os.fstat(fd).st_size - st.good_end
        if discarded:
            os.ftruncate(fd, st.good_end)
            usage.add(-discarded)
        f = _File(path, fd, usage)
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
        if not suspend:
            self.compressor.put((f.path, f.usage))

    def _end(self, f: _File, t: int, reason: str, **extra: object) -> None:
        payload = sl.event_payload(
            "end",
            {
                "reason": reason,
                "records": f.pending_seq + 1,
                "bytes_out": f.bytes_out,
                "bytes_in": f.bytes_in,
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
                    self._finish(p)
                except (OSError, sl.LogFormatError) as e:
                    log.warning("%s: left as it is: %s", p, e)

    def _finish(self, path: Path) -> None:
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
            f = self._resume(path, GuestUsage(path.parent, 1 << 62), t)
            if f is None:
                return
            reason = "no daemon re-opened this line: the guest ended while no daemon ran"
            self._append(f, sl.EVENT, t, sl.event_payload("boot-end", {"reason": reason}))
            self._end(f, t, reason, recovered=True)
            self._flush(f)
            os.fsync(f.fd)
            os.close(f.fd)
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
