"""`logs/kernel-BOOT.log`: the kernel process's stdout and stderr, stored under a budget.

docs/formats/session-log.md, "The kernel log". The kernel writes into the FIFO
`lines/kernel.out` (warden.daemon.kernelout); `KernelRelay` reads it on the event loop (one
read of at most READ_MAX per wake-up) and queues what it read for the session-log writer
thread, where `KernelLogFile` appends it to the file: plain text, as the kernel wrote it, at
most `cap_for(quota)` bytes per boot and within the guest's quota as output. The budget is the
file's size on disk, so a new daemon continues where the last one stopped. What does not fit
is counted; the file's last lines say so, and so does the daemon's event `kernel-log-quota`
(which, unlike the file's text, the guest cannot imitate).
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden.sessionlog.quota import DiskRoom, GuestUsage, Tier
from warden.sessionlog.writer import SessionLogWriter, ThreadLog

log = logging.getLogger("warden.sessionlog")

CAP_MAX = 1 << 20  # per boot; a boot writes ~0.5 KB here (8.6 KB with earlyprintk)
CAP_SHARE = 8  # and at most 1/8 of the guest's log quota
READ_MAX = 64 << 10  # per wake-up of the event loop
MARK_ROOM = 512  # kept under the cap for warden's own lines at the end


def cap_for(quota: int) -> int:
    return max(min(quota // CAP_SHARE, CAP_MAX), 4 * MARK_ROOM)


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


class KernelLogFile(ThreadLog):
    """The file, on the writer thread's side. `stored`, `dropped` and `full` may be read from
    the loop (plain values: no lock needed); `on_full` is called, on the writer thread, when the
    file stops taking the kernel's bytes."""

    def __init__(
        self,
        writer: SessionLogWriter,
        machine: str,
        path: Path,
        cap: int,
        usage: Callable[[], GuestUsage | None],
    ):
        self.writer = writer
        self.machine = machine
        self.path = path
        self.cap = cap
        self.usage_of = usage
        self.usage: GuestUsage | None = None
        self.disk: DiskRoom | None = None
        self.fd: int | None = None
        self.size = 0
        self.stored = 0
        self.dropped = 0
        self.full = False
        self.error = ""
        self.closed = False
        self.on_full: Callable[[], None] | None = None
        writer.submit(self, "open", 0, None)

    # ---- loop side
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.submit(self, "plain", 0, data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.submit(self, "close", 0, None)

    # ---- thread side
    def in_thread(self, writer: SessionLogWriter, op: str, t: int, arg: Any) -> None:
        if op == "open":
            self._open(writer)
        elif op == "plain":
            self._append(arg)
        elif op == "lost":
            self._drop(arg[1], "the daemon's writer fell behind")
        elif op == "close":
            self._close(writer)

    def _open(self, writer: SessionLogWriter) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self.fd = os.open(self.path, flags, 0o640)
            self.size = os.fstat(self.fd).st_size
            self.usage = self.usage_of()
            self.disk = writer.disk_for(self.path.parent)
        except OSError as e:
            log.error("%s: cannot open the kernel log: %s", self.path, e)
            return
        writer.open_other.add(self)
        # A daemon before this one may have filled it already: its closing line says so.
        self.full = self.size >= self.cap - MARK_ROOM

    def _room(self, n: int) -> tuple[int, str]:
        """Bytes of the next `n` that may be stored, and why not more."""
        room, why = self.cap - MARK_ROOM - self.size, "quota"
        if self.usage is not None and self.usage.room(Tier.OUTPUT) < room:
            room, why = self.usage.room(Tier.OUTPUT), "the guest's log quota is used up"
        if self.disk is not None and not self.disk.fits(Tier.OUTPUT, min(n, max(room, 0))):
            return 0, "the disk's free space is at its floor"
        return max(room, 0), why

    def _append(self, data: bytes) -> None:
        if self.fd is None or self.full:
            self._drop(len(data), "")
            return
        room, why = self._room(len(data))
        written = self._write(data[:room]) if room else 0
        self.stored += written
        if written < len(data):
            self._drop(len(data) - written, self.error or why)

    def _write(self, data: bytes) -> int:
        assert self.fd is not None
        try:
            n = os.write(self.fd, data)
        except OSError as e:
            self.error = f"writing failed: {e.strerror or e}"
            return 0
        self.size += n
        if self.usage is not None:
            self.usage.add(n)
        if self.disk is not None:
            self.disk.took(n)
        if n < len(data):
            self.error = "writing failed: a short write (the disk is full?)"
        return n

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        if self.full or self.fd is None:
            return
        self.full = True
        what = f"the kernel log reached its quota of {self.cap} bytes" if why == "quota" else why
        self._mark(f"{what}; what the kernel writes from now on this boot is counted, not stored")
        if self.on_full is not None:
            self.on_full()

    def _mark(self, text: str) -> None:
        """warden's own line at the end of the file: in the room kept for it."""
        line = f"\n[warden {_stamp()}: {text}]\n".encode()[: MARK_ROOM // 2]
        with contextlib.suppress(OSError):
            assert self.fd is not None
            n = os.write(self.fd, line)
            self.size += n
            if self.usage is not None:
                self.usage.add(n)

    def _close(self, writer: SessionLogWriter) -> None:
        if self.fd is None:
            return
        if self.dropped:
            self._mark(
                f"{self.dropped} bytes of kernel output were not stored while daemon "
                f"{os.getpid()} read this log (kept: at most {self.cap} bytes per boot)"
            )
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
        writer.open_other.discard(self)


class KernelRelay:
    """The loop side: reads the FIFO, hands the bytes to a KernelLogFile, reports drops."""

    def __init__(
        self,
        fifo: Path,
        file: KernelLogFile,
        report: Callable[[dict[str, Any]], None],
    ):
        self.fifo = fifo
        self.file = file
        self.report = report
        self.fd: int | None = None
        self.read_bytes = 0
        self.eof = False
        self._reported = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._home_loop = asyncio.get_running_loop()
        file.on_full = self._full_from_thread

    def start(self) -> None:
        """Open the FIFO by path (a new daemon re-opens it so) and read it on the loop."""
        self.fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._read_once)

    def drain_once(self) -> None:
        """Take what the FIFO holds now and close (a guest that ended while no daemon ran, a
        launch that failed: the launcher's error is there)."""
        with contextlib.suppress(FileNotFoundError):
            self.fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.close(drain=True)

    def _read_once(self) -> bool:  # also the reader callback
        """One read of at most READ_MAX; False when nothing more is there now."""
        if self.fd is None or self.eof:
            return False
        try:
            data = os.read(self.fd, READ_MAX)
        except BlockingIOError:
            return False
        except OSError as e:
            log.warning("%s: reading failed: %s", self.fifo, e)
            data = b""
        if not data:
            # No writer left: the kernel is gone. after_exit drains and closes.
            self.eof = True
            self._stop_reading()
            return False
        self.read_bytes += len(data)
        self.file.write(data)
        return True

    def _full_from_thread(self) -> None:
        self._home_loop.call_soon_threadsafe(self._report_once)

    def _report_once(self) -> None:
        if not self._reported:
            self._reported = True
            self.report(
                {
                    "cap": self.file.cap,
                    "path": str(self.file.path),
                    "note": "the kernel log reached its quota: the rest of this boot's kernel "
                    "output is counted, not stored",
                }
            )

    def _stop_reading(self) -> None:
        if self._loop is not None and self.fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.fd)
        self._loop = None

    def close(self, drain: bool) -> None:
        """Stop. `drain`: the kernel is gone, take what is left (at most the FIFO's size)."""
        if drain:
            while self._read_once():
                pass
        self._stop_reading()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.file.close()


def kernel_log_path(logs_dir: Path, boot: int) -> Path:
    return logs_dir / f"kernel-{boot}.log"
