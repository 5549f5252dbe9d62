"""Terminal lines: relay each guest line (con0, sslN) between its FIFOs and its clients.

One `Line` per machine line lives as long as the daemon. Each boot the supervisor opens the
daemon's ends of the line's FIFOs (`open_boot`) and closes them when the kernel is gone
(`close_boot`); clients (the CLI console, SSH concentrator sessions) stay attached across boots.

Arbitration (the conserver model): one writer per line, any number of spies. A second writer is
refused unless it forces a takeover, which demotes the old writer to a spy and is logged. Spies'
keystrokes go nowhere. A slow client never slows the guest: each client gets output through its
own bounded queue, and a client that falls too far behind is dropped.

Every byte in either direction and every attach/detach/takeover goes to the line's session log
(`LineLog`, implemented in warden.sessionlog.writer) before it is relayed.

Output is peeked, not read: tee(2) copies the FIFO's head into a private pipe, the copy is
relayed and handed to the log, and the same bytes are taken off the FIFO only once the log's
writer says they are written (or counted as not written). A daemon killed in between leaves
them in the FIFO, which outlives it while the kernel holds its ends: the next daemon logs them
again (its `reattach` event says how many may repeat) instead of nobody logging them
(docs/decisions/2026-12-07-zero-loss.md).

Input is logged before it is relayed, the other way round: a keystroke is held until the log's
writer says it is written, then written to the guest. A daemon killed in between leaves a
keystroke in the log that the guest never got (and `daemon-detach` counts the ones held),
never one the guest got that the log lacks.
"""

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from warden.daemon.files import F_SETPIPE_SZ, PIPE_SIZE, MachineFiles, pipe_size
from warden.errors import Conflict

log = logging.getLogger("warden.lines")

READ_CHUNK = 64 * 1024
SCROLLBACK = 64 * 1024
MAX_PENDING_INPUT = 4 << 20  # bytes queued toward a guest that is not reading
CLIENT_QUEUE = 4 << 20  # bytes queued toward one client before it is dropped
# Output peeked (relayed, handed to the log) and not yet taken off the FIFO: at most this much.
# tee copies from the FIFO's head, so each peek copies the held bytes again (references to
# the same pages) and drops that copy; the window slides as the writer confirms. Also the most
# a killed daemon's successor can log twice.
PEEK_WINDOW = 256 * 1024
# The writer normally answers within milliseconds (after a re-attach: once it has re-read and
# checked the part it continues, up to a second for a full 64 MiB quota on a loaded host); one
# that has not for this long (a disk that hangs) must not stop the relay: output is then taken
# off the FIFO as it is handed over (the old way: a kill then loses what is queued) until the
# writer catches up.
ACK_GRACE = 5.0


class LineLog(Protocol):
    """Where a line's traffic is recorded (warden.sessionlog.codec.SessionLog)."""

    def output(self, data: bytes) -> None: ...
    def input(self, data: bytes, user: str) -> None: ...
    def event(self, kind: str, **fields: object) -> None: ...
    def close(self) -> None: ...

    def on_written(self, done: Callable[[int], None]) -> None:
        """`done(n)` (from any thread, in order) once n more bytes given to `output` are in
        the file (write(2) returned: a killed process loses nothing of them) or are counted
        in it as not written (quota, disk, a failed write)."""
        ...

    def on_input_written(self, done: Callable[[int], None]) -> None:
        """The same for the bytes given to `input`."""
        ...


class NullLog:
    def __init__(self) -> None:
        self._done: Callable[[int], None] | None = None
        self._input_done: Callable[[int], None] | None = None

    def output(self, data: bytes) -> None:
        if self._done is not None:
            self._done(len(data))  # nothing to write: done at once

    def on_written(self, done: Callable[[int], None]) -> None:
        self._done = done

    def on_input_written(self, done: Callable[[int], None]) -> None:
        self._input_done = done

    def input(self, data: bytes, user: str) -> None:
        if self._input_done is not None:
            self._input_done(len(data))

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
        self._pending = bytearray()  # input the log has: to the guest as it reads
        # input handed to the log and not yet confirmed written: held back (module docstring)
        self._unlogged = bytearray()
        # confirmations to skip: of input logged but not held (dropped, or relayed unconfirmed)
        self._in_skip = 0
        self._in_late = False  # the writer was overdue: input goes on unconfirmed till it is not
        self._in_overdue: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # the peek (module docstring): a private pipe tee(2) copies into, /dev/null to take
        # bytes off the FIFO without copying them, and the bytes of the FIFO's head that were
        # relayed and logged but not yet taken off it
        self._peek_r: int | None = None
        self._peek_w: int | None = None
        self._null: int | None = None
        self._inflight = 0
        self._acked = 0  # of _inflight, what the writer has confirmed
        self._forced = 0  # taken off unconfirmed (ACK_GRACE): confirmations still to come
        self._gen = 0  # this boot's number of open_boot: confirmations of an older one are stale
        self._overdue: asyncio.TimerHandle | None = None
        self._paused = False
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
        try:
            self._wfd = os.open(
                self.files.fifo(self.name, "in"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError as e:
            if e.errno != errno.ENXIO:
                self._close_fds()
                raise
            # No reader: a kernel that is ending closes its files before its pid is gone (a
            # daemon re-attaching then finds it "alive"). Its output is still read; its exit,
            # seen by the supervisor, closes the boot. Nothing typed can reach it.
            logging.getLogger("warden.lines").warning(
                "%s/%s: the guest reads no input (its kernel is ending)", self.machine, self.name
            )
            self._wfd = None
        self._open_peek()
        if reattach:
            waiting = _fionread(self._rfd)
            size = pipe_size(self._rfd)
            repeat = min(waiting, PEEK_WINDOW)
            self.log.event(
                "reattach",
                waiting=waiting,
                buffer=size,
                full=waiting >= size,
                may_repeat=repeat,
                note=(
                    "output below was buffered while no daemon ran"
                    if waiting < size
                    else "the buffer was full: output the guest printed after it filled was lost"
                )
                + (
                    f"; its first {repeat} bytes may repeat the end of what the last daemon"
                    " logged (it had logged them and was gone before it took them off)"
                    if repeat
                    else ""
                ),
            )
        self._gen += 1
        gen, loop = self._gen, self._loop

        def done(n: int) -> None:  # the writer thread's confirmation, onto the loop
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._written, gen, n)

        def input_done(n: int) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._input_written, gen, n)

        self.log.on_written(done)
        self.log.on_input_written(input_done)
        self._paused = False
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
        if self._rfd is not None and self._null is not None:
            # Drain what the kernel wrote before it ended: the kernel's ends are closed, so
            # ours is the FIFO's last and nothing outlives this daemon to be peeked at again.
            with contextlib.suppress(OSError):
                self._take(self._inflight)  # relayed and logged already
                while True:
                    data = os.read(self._rfd, READ_CHUNK)
                    if not data:
                        break
                    self._deliver(data)
        self._close_fds()
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
        left = self._inflight - self._acked
        if self._rfd is not None and self._null is not None and self._acked:
            with contextlib.suppress(OSError):
                self._take(self._acked)  # written: the next daemon must not see them again
        held = len(self._unlogged) + len(self._pending)
        self._close_fds()
        # `unconsumed`: bytes logged above (or queued to be) that stay in the FIFO, where the
        # next daemon reads them again (its `reattach` says they may repeat). `input_held`:
        # keystrokes logged (or queued to be) that never reached the guest.
        self.log.event("daemon-detach", unconsumed=left, input_held=held)
        self._pending.clear()
        self.log.close()
        self.log = NullLog()

    def _open_peek(self) -> None:
        assert self._rfd is not None
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._peek_r, self._peek_w = r, w
        # As many slots as the FIFO: tee copies buffers, and a FIFO of small writes has many.
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, max(PIPE_SIZE, pipe_size(self._rfd)))
        self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self._inflight = self._acked = self._forced = 0

    def _close_fds(self) -> None:
        for timer in (self._overdue, self._in_overdue):
            if timer is not None:
                timer.cancel()
        self._overdue = self._in_overdue = None
        self._unlogged.clear()
        self._in_skip, self._in_late = 0, False
        self._gen += 1  # confirmations still on their way belong to nobody now
        for fd in (self._rfd, self._wfd, self._peek_r, self._peek_w, self._null):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._rfd = self._wfd = self._peek_r = self._peek_w = self._null = None
        self._inflight = self._acked = self._forced = 0

    # -- guest to clients
    def _readable(self) -> None:
        assert self._rfd is not None and self._loop is not None
        assert self._peek_r is not None and self._peek_w is not None
        held = self._inflight  # at the FIFO's head, relayed and logged already
        if held and (held >= PEEK_WINDOW or _fionread(self._rfd) <= held):
            self._pause()  # nothing new past them, or the window is full: wait for the writer
            return
        try:
            # From the head: the held bytes again (page references, no copy), then new ones.
            # At most READ_CHUNK new ones a time: the writer writes one chunk while the next
            # is peeked (a whole window a time would leave one of them idle).
            n = tee(self._rfd, self._peek_w, min(PEEK_WINDOW, held + READ_CHUNK))
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("%s/%s: read failed: %s", self.machine, self.name, e)
            n = 0
        if not n and not held:
            # Every writer is gone: the kernel exited. The supervisor closes the boot.
            self._loop.remove_reader(self._rfd)
            return
        if n <= held:  # fewer than we hold: see _take
            _discard(self._peek_r, self._null, n)
            self._pause()
            return
        _discard(self._peek_r, self._null, held)
        data = _read_exactly(self._peek_r, n - held)
        self._inflight = n
        if self._forced:
            # The writer is behind by more than ACK_GRACE: take it off now, as before, until
            # its confirmations catch up with everything taken off unconfirmed.
            self._forced += len(data)
            self._take(n)
        else:
            if n >= PEEK_WINDOW:
                self._pause()
            if self._overdue is None:
                self._overdue = self._loop.call_later(ACK_GRACE, self._ack_overdue, self._gen)
        self._deliver(data)

    def _pause(self) -> None:
        if not self._paused and self._loop is not None and self._rfd is not None:
            self._loop.remove_reader(self._rfd)
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self._loop is not None and self._rfd is not None:
            self._loop.add_reader(self._rfd, self._readable)
            self._paused = False

    def _written(self, gen: int, n: int) -> None:
        """The writer confirmed n more output bytes: take them off the FIFO."""
        if gen != self._gen:
            return
        early = min(n, self._forced)
        self._forced -= early
        self._acked += n - early
        k = min(self._acked, self._inflight)
        if not k:
            return
        self._take(k)
        self._acked -= k
        if self._overdue is not None:  # the writer moves: the grace starts again
            self._overdue.cancel()
            self._overdue = None
        if self._inflight and self._loop is not None:
            self._overdue = self._loop.call_later(ACK_GRACE, self._ack_overdue, self._gen)
        self._resume()

    def _ack_overdue(self, gen: int) -> None:
        self._overdue = None
        if gen != self._gen or not self._inflight:
            return
        log.warning(
            "%s/%s: the log writer has not confirmed %d bytes in %.0f s; relaying on without"
            " waiting (a kill now loses what it has queued)",
            self.machine,
            self.name,
            self._inflight,
            ACK_GRACE,
        )
        self._forced += self._inflight - self._acked
        self._acked = 0
        self._take(self._inflight)
        self._resume()

    def _take(self, n: int) -> None:
        """Take n bytes (the peeked head) off the FIFO, into /dev/null: no copy."""
        assert self._rfd is not None and self._null is not None
        left = n
        while left > 0:
            try:
                got = os.splice(self._rfd, self._null, left, flags=SPLICE_F_NONBLOCK)
            except BlockingIOError:
                got = 0
            if not got:
                # Fewer bytes than were peeked: only a kernel reading its own spare read end
                # does that (a subverted guest, hiding its own output from itself).
                log.warning(
                    "%s/%s: %d peeked bytes were gone from the FIFO", self.machine, self.name, left
                )
                break
            left -= got
        self._inflight -= n

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
        return len(self._pending) + len(self._unlogged)

    def write(self, client: Client, data: bytes) -> None:
        if not client.writer:
            return  # a spy's keystrokes go nowhere
        self.bytes_in += len(data)
        relay = self._wfd is not None
        dropped = relay and self.pending_input + len(data) > MAX_PENDING_INPUT
        if dropped or not relay or self._in_late:
            # Logged, and not held: dropped (or nothing can reach the guest), or the writer is
            # overdue and input goes on unconfirmed. Its confirmation must release nothing.
            self._in_skip += len(data)
            self.log.input(data, client.user)
            if dropped:
                client.notify(
                    f"[warden: {self.name} is not reading its input; {len(data)} bytes dropped]"
                )
                self.log.event("input-dropped", bytes=len(data), user=client.user)
            elif relay:
                self._pending += data
                self._flush()
            return
        self._unlogged += data
        self.log.input(data, client.user)  # its confirmation (_input_written) relays it
        if self._unlogged and self._in_overdue is None and self._loop is not None:
            self._in_overdue = self._loop.call_later(ACK_GRACE, self._input_overdue, self._gen)

    def _input_written(self, gen: int, n: int) -> None:
        """The writer confirmed n more input bytes: relay as many held ones to the guest."""
        if gen != self._gen:
            return
        # Confirmations of bytes not held are taken first: that may hold a keystroke a little
        # longer than needed, never relay one before the log has it.
        early = min(n, self._in_skip)
        self._in_skip -= early
        if not self._in_skip:
            self._in_late = False
        k = min(n - early, len(self._unlogged))
        if k:
            self._pending += self._unlogged[:k]
            del self._unlogged[:k]
            self._flush()
        if self._in_overdue is not None:  # the writer moves: the grace starts again
            self._in_overdue.cancel()
            self._in_overdue = None
        if self._unlogged and self._loop is not None:
            self._in_overdue = self._loop.call_later(ACK_GRACE, self._input_overdue, self._gen)

    def _input_overdue(self, gen: int) -> None:
        self._in_overdue = None
        if gen != self._gen or not self._unlogged:
            return
        log.warning(
            "%s/%s: the log writer has not confirmed %d typed bytes in %.0f s; relaying them"
            " without waiting",
            self.machine,
            self.name,
            len(self._unlogged),
            ACK_GRACE,
        )
        self._in_skip += len(self._unlogged)
        self._in_late = True
        self._pending += self._unlogged
        self._unlogged.clear()
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


SPLICE_F_NONBLOCK = 2
_libc = ctypes.CDLL(None, use_errno=True)
_tee = _libc.tee
_tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
_tee.restype = ctypes.c_ssize_t


def tee(fd_in: int, fd_out: int, n: int) -> int:
    """tee(2), non-blocking: copy up to n bytes from the head of pipe fd_in into pipe fd_out
    without taking them off fd_in (Python has os.splice but no os.tee). 0: fd_in is empty and
    has no writer; BlockingIOError: empty, or fd_out full."""
    got = int(_tee(fd_in, fd_out, n, SPLICE_F_NONBLOCK))
    if got < 0:
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            raise BlockingIOError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))
    return got


def _discard(fd: int, null: int | None, n: int) -> None:
    """Drop the first n bytes of the private pipe (copies of what is held) into /dev/null."""
    assert null is not None
    while n > 0:
        n -= os.splice(fd, null, n)


def _read_exactly(fd: int, n: int) -> bytes:
    """The n bytes tee just put in the (otherwise empty) private pipe."""
    data = os.read(fd, n)
    while len(data) < n:
        data += os.read(fd, n - len(data))
    return data


def _fionread(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")
