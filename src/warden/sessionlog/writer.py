"""Writing session logs without slowing the guests or the event loop.

The event loop only timestamps and queues: `SessionLog.output()` (called by daemon/lines.py
for every chunk a guest prints) appends a tuple to a deque and wakes the writer thread. The
thread batches, opens, resumes and closes the files; each open file (warden.sessionlog.
logfile) encodes, chains the MACs, applies the quota (warden.sessionlog.quota) and issues one
write(2) per batch; a second thread (warden.sessionlog.worker) compresses closed files.
hashlib and os.write release the GIL, so the loop keeps running while a batch is hashed and
written. The thread also notes every part's opening and closing in the logs manifest
(warden.sessionlog.manifest).

Both threads end by themselves: when the daemon has asked them to stop (or its main thread is
gone) and no file is open and nothing is queued; they restart if work arrives again.
"""

import contextlib
import errno
import fcntl
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden.sessionlog import codec as sl
from warden.sessionlog import manifest as mf
from warden.sessionlog import store as logstore
from warden.sessionlog.logfile import LogFile
from warden.sessionlog.quota import (
    RESERVE_MAX,
    DiskRoom,
    GuestUsage,
    Tier,
    reserve_for,
)
from warden.sessionlog.ttylog import QuotaClassifier
from warden.sessionlog.worker import Compressor, Worker

log = logging.getLogger("warden.sessionlog")

MAX_QUEUED = 64 << 20  # output bytes queued for the writer before output is dropped (counted)
QUEUE_RESERVE = 8 << 20  # more for input and tty-log records: they are not dropped first

__all__ = ["RESERVE_MAX", "GuestUsage", "SessionLogWriter", "SessionLog", "reserve_for"]


def _link_unnamed(fd: int, path: Path) -> None:
    """Give the O_TMPFILE `fd` the name `path`; FileExistsError if it is taken, as O_EXCL.

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N: os.link calls plain link(2), which
    would link the /proc symlink itself, unless a dir fd is given."""
    d = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=d, follow_symlinks=True)
    finally:
        os.close(d)


class SessionLog:
    """One line's log for one boot: the LineLog daemon/lines.py writes to.

    Every method runs on the event loop and only queues; `file` belongs to the writer thread.
    """

    def __init__(
        self,
        writer: "SessionLogWriter",
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
        self.file: LogFile | None = None
        self.classifier: QuotaClassifier | None = None  # the writer thread's, for TTYLOG
        self._suspend = False
        self._end_reason = ""
        self.closed = False
        self.done: Callable[[int], None] | None = None  # see on_written
        self.input_done: Callable[[int], None] | None = None  # see on_input_written
        writer.submit(self, "open", logstore.now_us(), None)

    def on_written(self, done: Callable[[int], None]) -> None:
        """`done(n)` from the writer thread once n more output bytes are written (write(2)
        returned) or counted as not written: the line then takes them off its FIFO."""
        self.done = done

    def on_input_written(self, done: Callable[[int], None]) -> None:
        """The same for input: the line relays a keystroke to the guest only after this."""
        self.input_done = done

    def output(self, data: bytes) -> None:
        if not self.closed:
            self.writer.submit(self, "out", logstore.now_us(), data)

    def input(self, data: bytes, user: str) -> None:
        if not self.closed:
            self.writer.submit(self, "in", logstore.now_us(), (user, data))
        elif self.input_done is not None:
            self.input_done(len(data))  # nothing will log it: hold nothing back

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

    def in_thread(self, writer: "SessionLogWriter", op: str, t: int, arg: Any) -> None:
        raise NotImplementedError

    def flush_in_thread(self, writer: "SessionLogWriter") -> None:
        """The end of a batch."""


class SessionLogWriter(Worker):
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
        touched: dict[LogFile, None] = {}
        others: dict[ThreadLog, None] = {}
        # Output chunks of one file that follow each other in a batch become one record (up
        # to 64 KiB, stamped with the first chunk's time): fewer headers, MACs and Python.
        outs: dict[LogFile, tuple[int, list[bytes], int]] = {}
        done = 0
        # Output (and input) bytes per SessionLog that this batch writes or counts: confirmed
        # to its line once the batch's writes returned (SessionLog.on_written and
        # on_input_written).
        confirm: dict[SessionLog, int] = {}
        confirm_in: dict[SessionLog, int] = {}
        for lg, op, t, arg, n in batch:
            done += n
            if isinstance(lg, SessionLog) and (op == "out" or (op == "lost" and arg[0] == "out")):
                confirm[lg] = confirm.get(lg, 0) + (len(arg) if op == "out" else arg[1])
            elif isinstance(lg, SessionLog) and (op == "in" or (op == "lost" and arg[0] == "in")):
                confirm_in[lg] = confirm_in.get(lg, 0) + (len(arg[1]) if op == "in" else arg[1])
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
                f.record(sl.EVENT, t, sl.event_payload(kind, fields), tier)
            elif op == "rec":
                self._other(lg, f, t, arg[0], arg[1])
            elif op == "lost":  # the thread fell MAX_QUEUED behind: never reached it
                what, count = arg
                if what == "in":
                    f.count_drop(t, Tier.HOST, 0, count, "queue")
                else:
                    f.count_drop(t, Tier.OUTPUT, count, 0, "queue")
            elif op == "close":
                touched.pop(f, None)
                lg.file = None
                self.open_logs.discard(lg)
                self._close(f, t, suspend=arg[0], reason=arg[1])
        self._out_all(outs)
        self._flush_all(touched)
        for other in others:
            other.flush_in_thread(self)
        for what, confirms in (("output", confirm), ("input", confirm_in)):
            for lg, count in confirms.items():
                cb = lg.done if what == "output" else lg.input_done
                if cb is not None:
                    try:
                        cb(count)
                    except Exception:  # a line's callback must not stop the other logs
                        log.exception("%s %s: confirming %s", lg.machine, lg.line, what)
        if done:
            with self.qlock:
                self.queued -= done

    def _out(self, outs: dict[LogFile, tuple[int, list[bytes], int]], f: LogFile) -> None:
        acc = outs.pop(f, None)
        if acc is None:
            return
        t, pieces, n = acc
        if n > sl.WRITE_PAYLOAD:  # a single chunk bigger than a record
            self._data(f, sl.OUTPUT, t, b"".join(pieces), "")
        else:
            f.record(sl.OUTPUT, t, pieces, Tier.OUTPUT, out=n)

    def _out_all(self, outs: dict[LogFile, tuple[int, list[bytes], int]]) -> None:
        for f in list(outs):
            self._out(outs, f)

    def _flush_all(self, touched: dict[LogFile, None]) -> None:
        for f in touched:
            f.flush()
        touched.clear()

    # records
    def _data(self, f: LogFile, rtype: int, t: int, data: bytes, user: str) -> None:
        for i in range(0, len(data), sl.WRITE_PAYLOAD):
            chunk = data[i : i + sl.WRITE_PAYLOAD]
            if rtype == sl.INPUT:
                payload = sl.input_payload(user, chunk)
                f.record(rtype, t, payload, Tier.HOST, inn=len(chunk))
            else:
                f.record(rtype, t, chunk, Tier.OUTPUT, out=len(chunk))

    def _other(self, lg: SessionLog, f: LogFile, t: int, rtype: int, payload: bytes) -> None:
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
                f.record(rtype, t, piece, tier, out=len(piece))
            else:
                f.record(rtype, t, piece, tier, inn=len(piece))

    def _classifier(self, lg: SessionLog, f: LogFile) -> QuotaClassifier:
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

    def _new_file(self, path: Path, fd: int, usage: GuestUsage, machine: str) -> LogFile:
        parsed = logstore.parse_name(path)
        assert parsed is not None
        line, boot, part = parsed
        d = path.parent
        return LogFile(
            path,
            fd,
            self.key,
            usage,
            self.disk_for(d),
            self.manifest_for(d, machine),
            line,
            boot,
            part,
        )

    def _create(self, lg: SessionLog, d: Path, usage: GuestUsage, t: int) -> LogFile:
        """A new part, on disk only once whole: the header and its `open` event are written to
        an unnamed file (O_TMPFILE) that is then linked under the part's name. A daemon killed
        half-way leaves no empty or headless part (`logs verify` would call it tampered)."""
        part = 1
        while True:
            path = d / logstore.log_name(lg.line, lg.boot, part)
            if path.exists() or path.with_name(path.name + ".gz").exists():
                part += 1
                continue
            f, mac0 = self._write_opening(lg, d, path, part, usage, t)
            try:
                _link_unnamed(f.fd, path)
            except OSError as e:
                os.close(f.fd)
                usage.add(-f.size)
                f.disk.took(-f.size)
                if not isinstance(e, FileExistsError):
                    raise
                part += 1
                continue
            break
        # After the link: a part whose `open` never reached the manifest holds only its opening
        # (warden.sessionlog.verify tells it from a part put there).
        f.note_manifest("open", t, False, mac0=mac0.hex())
        return f

    def _write_opening(
        self, lg: SessionLog, d: Path, path: Path, part: int, usage: GuestUsage, t: int
    ) -> tuple[LogFile, bytes]:
        """The part's header and `open` event, written to an unnamed file in `d`."""
        flags = os.O_TMPFILE | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(d, flags, 0o600)
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
        f.append(sl.EVENT, t, event)
        f.flush()
        if f.failed_attempts:  # not even the header could be written: no file at all
            os.close(fd)
            raise OSError(errno.ENOSPC, f"cannot write the header of {path}: {f.failed_error}")
        return f, mac0

    def _continue(self, lg: SessionLog, d: Path, usage: GuestUsage, t: int) -> LogFile | None:
        """Re-open this boot's last part after a daemon restart; None: start a new part."""
        parts = [
            r
            for r in logstore.logs_in(lg.machine, d, False)
            if r.line == lg.line and r.boot == lg.boot
        ]
        if not parts or parts[-1].compressed:
            return None
        return self._resume(parts[-1].path, usage, t, lg.machine)

    def _resume(self, path: Path, usage: GuestUsage, t: int, machine: str) -> LogFile | None:
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
        f.note_manifest("resume", t, True, from_seq=st.last_seq)
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
        f.append(sl.EVENT, t, sl.event_payload("recovered", event))
        f.flush()
        return f

    def _scan(self, path: Path) -> sl.ReadState | None:
        with sl.open_raw(path) as fh:
            r = sl.LogReader(fh, self.key, str(path))
            if r.header.key_id != self.key_id:
                return None
            for _ in r:
                pass
            return r.state

    def _close(self, f: LogFile, t: int, suspend: bool, reason: str) -> None:
        if not suspend:
            if f.dropped_records:
                f.note_drop(t, "closing")
            f.end(t, reason)
        f.flush()
        if not suspend:
            with contextlib.suppress(OSError):
                os.fsync(f.fd)
        os.close(f.fd)
        if f.failed_attempts:
            log.warning("%s: closed without its last records (writing failed)", f.path)
        elif f.seq:
            kind = "detach" if suspend else "end"
            f.note_manifest(kind, t, True, seq=f.seq, mac=f.mac.hex())
        if not suspend:
            self.compressor.put((f.path, f.usage))

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
            f.append(sl.EVENT, t, sl.event_payload("boot-end", {"reason": reason}))
            f.end(t, reason, recovered=True)
            f.flush()
            os.fsync(f.fd)
            os.close(f.fd)
            if not f.failed_attempts:
                f.note_manifest("end", t, True, seq=f.seq, mac=f.mac.hex())
        self.compressor.put((path, None))
