"""Terminal lines: relay each guest line (con0, sslN) between its FIFOs and its clients.

One `Line` per machine line lives as long as the daemon. Each boot the supervisor opens the
daemon's ends of the line's FIFOs (`open_boot`) and closes them when the kernel is gone
(`close_boot`); clients (the CLI console, SSH concentrator sessions) stay attached across boots.

Arbitration (the conserver model): one writer per line, any number of spies. A second writer is
refused unless it forces a takeover, which demotes the old writer to a spy and is logged. Spies'
keystrokes go nowhere. A slow client never slows the guest: each client gets output through its
own bounded queue, and a client that falls too far behind is dropped.

Every byte in either direction and every attach/detach/takeover goes to the line's session log
(`LineLog`, implemented in warden.sessionlog.codec) before it is relayed.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from warden.daemon.files import MachineFiles, pipe_size
from warden.errors import Conflict

log = logging.getLogger("warden.lines")

READ_CHUNK = 64 * 1024
SCROLLBACK = 64 * 1024
MAX_PENDING_INPUT = 4 << 20  # bytes queued toward a guest that is not reading
CLIENT_QUEUE = 4 << 20  # bytes queued toward one client before it is dropped


class LineLog(Protocol):
    """Where a line's traffic is recorded (warden.sessionlog.codec.SessionLog)."""

    def output(self, data: bytes) -> None: ...
    def input(self, data: bytes, user: str) -> None: ...
    def event(self, kind: str, **fields: object) -> None: ...
    def close(self) -> None: ...


class NullLog:
    def output(self, data: bytes) -> None:
        pass

    def input(self, data: bytes, user: str) -> None:
        pass

    def event(self, kind: str, **fields: object) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(eq=False)
class Client:
    """One attached viewer. `send` must not block; `notify` carries events (text lines)."""

    user: str
    source: str
    send: Callable[[bytes], None]
    notify: Callable[[str], None]
    close: Callable[[str], None]
    writer: bool = False
    since: float = field(default_factory=time.time)

    def describe(self) -> str:
        return f"{self.user} from {self.source}"


class Line:
    def __init__(self, machine: str, name: str, files: MachineFiles):
        self.machine = machine
        self.name = name
        self.files = files
        self.clients: list[Client] = []
        self.scrollback: deque[bytes] = deque()
        self._scrollback_bytes = 0
        self.log: LineLog = NullLog()
        self._rfd: int | None = None
        self._wfd: int | None = None
        self._pending = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.on_output: list[Callable[[bytes], None]] = []  # extra taps (e.g. reboot detection)

    # -- boot life cycle
    @property
    def open(self) -> bool:
        return self._rfd is not None

    def open_boot(self, log: LineLog, reattach: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self.log = log
        self._rfd = os.open(
            self.files.fifo(self.name, "out"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        )
        self._wfd = os.open(
            self.files.fifo(self.name, "in"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
        )
        if reattach:
            waiting = _fionread(self._rfd)
            size = pipe_size(self._rfd)
            self.log.event(
                "reattach",
                waiting=waiting,
                buffer=size,
                full=waiting >= size,
                note=(
                    "output below was buffered while no daemon ran"
                    if waiting < size
                    else "the buffer was full: output the guest printed after it filled was lost"
                ),
            )
        self._loop.add_reader(self._rfd, self._readable)
        self._notify_all(f"[warden: {self.machine} {self.name} connected]")

    def close_boot(self, reason: str) -> None:
        if self._loop is not None:
            for fd in (self._rfd,):
                if fd is not None:
                    with contextlib.suppress(Exception):
                        self._loop.remove_reader(fd)
            if self._wfd is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(self._wfd)
        if self._rfd is not None:
            # Drain what the kernel wrote before it ended.
            with contextlib.suppress(OSError):
                while True:
                    data = os.read(self._rfd, READ_CHUNK)
                    if not data:
                        break
                    self._deliver(data)
        for fd in (self._rfd, self._wfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._rfd = self._wfd = None
        self._pending.clear()
        self.log.event("boot-end", reason=reason)
        self.log.close()
        self.log = NullLog()
        self._notify_all(f"[warden: {self.machine} {self.name}: {reason}]")

    def detach_daemon(self) -> None:
        """The daemon is going away but the guest stays: close our ends, keep the FIFOs."""
        if self._loop is not None and self._rfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._rfd)
        if self._loop is not None and self._wfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._wfd)
        for fd in (self._rfd, self._wfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._rfd = self._wfd = None
        self.log.event("daemon-detach")
        self.log.close()
        self.log = NullLog()

    # -- guest to clients
    def _readable(self) -> None:
        assert self._rfd is not None
        try:
            data = os.read(self._rfd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("%s/%s: read failed: %s", self.machine, self.name, e)
            data = b""
        if not data:
            # Every writer is gone: the kernel exited. The supervisor closes the boot.
            assert self._loop is not None
            self._loop.remove_reader(self._rfd)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.log.output(data)
        self.scrollback.append(data)
        self._scrollback_bytes += len(data)
        while self._scrollback_bytes > SCROLLBACK and len(self.scrollback) > 1:
            self._scrollback_bytes -= len(self.scrollback.popleft())
        for tap in self.on_output:
            tap(data)
        for c in list(self.clients):
            try:
                c.send(data)
            except Exception as e:  # a broken client must not break the line
                self._drop(c, f"output failed: {e}")

    def recent(self, limit: int = SCROLLBACK) -> bytes:
        data = b"".join(self.scrollback)
        return data[-limit:]

    # -- clients to guest
    @property
    def pending_input(self) -> int:
        """Bytes clients sent that the guest has not read yet (for flow control upstream)."""
        return len(self._pending)

    def write(self, client: Client, data: bytes) -> None:
        if not client.writer:
            return  # a spy's keystrokes go nowhere
        self.log.input(data, client.user)
        self.bytes_in += len(data)
        if self._wfd is None:
            return
        if len(self._pending) + len(data) > MAX_PENDING_INPUT:
            client.notify(
                f"[warden: {self.name} is not reading its input; {len(data)} bytes dropped]"
            )
            self.log.event("input-dropped", bytes=len(data), user=client.user)
            return
        self._pending += data
        self._flush()

    def _flush(self) -> None:
        if self._wfd is None or self._loop is None:
            return
        while self._pending:
            try:
                n = os.write(self._wfd, self._pending)
            except BlockingIOError:
                self._loop.add_writer(self._wfd, self._writable)
                return
            except OSError as e:
                log.warning("%s/%s: write failed: %s", self.machine, self.name, e)
                self._pending.clear()
                return
            del self._pending[:n]
        with contextlib.suppress(Exception):
            self._loop.remove_writer(self._wfd)

    def _writable(self) -> None:
        self._flush()

    # -- attach / detach
    def writer(self) -> Client | None:
        return next((c for c in self.clients if c.writer), None)

    def attach(self, client: Client, want_write: bool, force: bool = False) -> None:
        current = self.writer()
        if want_write and current is not None:
            if not force:
                raise Conflict(
                    f"{self.machine} {self.name} has a writer ({current.describe()}); "
                    "attach read-only (--spy) or take over (--force)"
                )
            current.writer = False
            current.notify(
                f"[warden: {client.describe()} took over {self.name}; you are a spy now]"
            )
            self.log.event(
                "takeover", user=client.user, source=client.source, previous=current.user
            )
        client.writer = want_write
        self.clients.append(client)
        self.log.event(
            "attach", user=client.user, source=client.source, mode="rw" if want_write else "spy"
        )

    def detach(self, client: Client, reason: str = "detached") -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.log.event("detach", user=client.user, source=client.source, reason=reason)

    def resize(self, client: Client, cols: int, rows: int) -> None:
        self.log.event("resize", user=client.user, cols=cols, rows=rows)

    def _drop(self, client: Client, reason: str) -> None:
        self.detach(client, reason)
        with contextlib.suppress(Exception):
            client.close(reason)

    def _notify_all(self, text: str) -> None:
        for c in list(self.clients):
            with contextlib.suppress(Exception):
                c.notify(text)

    def drop_all(self, reason: str) -> None:
        for c in list(self.clients):
            self._drop(c, reason)


def _fionread(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")
