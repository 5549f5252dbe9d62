"""`warden console NAME [--line L]`: a guest's terminal line, through the daemon.

On a TTY: interactive, raw mode; Ctrl-] detaches (telnet's and virsh's escape; it never needs
to reach a guest). Otherwise: stdin is written to the line and what the line prints is copied
to stdout until stdin ends plus --timeout seconds, so scripts and tests can drive a guest.
stdin may be anything a script gives: a pipe, a file, /dev/null (epoll refuses files and
/dev/null, so those are read by plain reads in a thread; they never block).

What the guest prints goes through warden.termsafe.TerminalFilter (OSC/DCS/APC/PM/SOS strings
and terminal queries removed) except in the writer's own interactive session, whose programs
need their terminal's answers (docs/decisions/2026-12-07-operator-terminals.md): a spy, a
script and a writer demoted to spy get the filtered stream; `--raw` turns the filter off.
"""

import asyncio
import contextlib
import os
import select
import signal
import sys
import termios
import tty
from collections.abc import AsyncGenerator

from warden import termsafe
from warden.api.lineclient import Closed, LineSocket, Output
from warden.errors import Conflict
from warden.paths import Layout
from warden.tasks import spawn

ESCAPE = 0x1D  # Ctrl-]
CAN = b"\x18"  # cancels any escape sequence a terminal is in the middle of
DEMOTED = "you are a spy now"  # in the notice warden.daemon.lines sends on a takeover
READ_CHUNK = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Screen:
    """Where the guest's output goes: through a TerminalFilter, or raw."""

    def __init__(self, fd: int, filtered: bool):
        self.fd = fd
        self.filter = termsafe.TerminalFilter() if filtered else None

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data if self.filter is None else self.filter.feed(data))

    def start_filtering(self) -> None:
        """From raw to filtered mid-stream (the writer became a spy)."""
        if self.filter is None:
            self.filter = termsafe.TerminalFilter()
            _write_all(self.fd, CAN)  # a sequence the raw stream left open ends here

    def end(self) -> None:
        if self.filter is not None:
            _write_all(self.fd, self.filter.end())


async def _pump_out(sock: LineSocket, screen: Screen, quiet: bool) -> str:
    """Copy the guest's output to the screen; returns why the stream ended."""
    try:
        async for frame in sock.frames():
            if isinstance(frame, Output):
                screen.write(frame.data)
            elif isinstance(frame, Closed):
                return frame.reason
            else:
                if DEMOTED in frame.text:
                    screen.start_filtering()
                if frame.text and not quiet:
                    os.write(2, f"\r\n{termsafe.line(frame.text)}\r\n".encode())
        return "connection closed"
    finally:
        screen.end()


async def interactive(
    layout: Layout, name: str, line: str, query: dict[str, str], raw: bool
) -> int:
    sock = await LineSocket.open(layout, name, line, query)
    # The writer's own session stays raw: its programs need their terminal's answers.
    screen = Screen(1, filtered=not raw and query["mode"] == "spy")
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    done = asyncio.Event()
    reason = ["detached"]

    def on_input() -> None:
        data = os.read(fd, 4096)
        if not data or ESCAPE in data:
            head = data.split(bytes([ESCAPE]), 1)[0] if data else b""
            if head:
                spawn(sock.send(head), "console")
            done.set()
            return
        spawn(sock.send(data), "console")

    def on_winch() -> None:
        cols, rows = os.get_terminal_size(fd)
        spawn(sock.resize(cols, rows), "console")

    os.write(2, f"[warden: attached to {name} {line}; Ctrl-] detaches]\r\n".encode())
    tty.setraw(fd)
    loop.add_reader(fd, on_input)
    loop.add_signal_handler(signal.SIGWINCH, on_winch)
    on_winch()
    out = spawn(_pump_out(sock, screen, False), "console")
    waiter = spawn(done.wait(), "console")
    try:
        finished, _ = await asyncio.wait({out, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if out in finished:
            reason[0] = out.result()
    finally:
        loop.remove_reader(fd)
        loop.remove_signal_handler(signal.SIGWINCH)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        await sock.close()
        for t in (out, waiter):
            t.cancel()
    os.write(2, f"\r\n[warden: {termsafe.line(reason[0])}]\r\n".encode())
    return 0


def _pollable(fd: int) -> bool:
    """Whether epoll takes `fd` (pipes, sockets, terminals do; files and /dev/null do not)."""
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
    except PermissionError:
        return False
    finally:
        ep.close()
    return True


async def read_input(fd: int) -> AsyncGenerator[bytes, None]:
    """The chunks of `fd` until its end, whatever kind of file it is."""
    if not _pollable(fd):
        # A file or /dev/null: always readable, so a read never blocks (and a thread reading
        # one cannot keep the process from exiting).
        while data := await asyncio.to_thread(os.read, fd, READ_CHUNK):
            yield data
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", closefd=False)
    )
    try:
        while data := await reader.read(READ_CHUNK):
            yield data
    finally:
        transport.close()
        os.set_blocking(fd, True)  # the transport made it non-blocking; stdin is shared


async def _send_input(sock: LineSocket, fd: int) -> None:
    async with contextlib.aclosing(read_input(fd)) as chunks:
        async for data in chunks:
            await sock.send(data)


async def scripted(
    layout: Layout, name: str, line: str, query: dict[str, str], timeout: float, raw: bool
) -> int:
    sock = await LineSocket.open(layout, name, line, query)
    # No one answers the guest's terminal queries here (and a terminal on stdout would type
    # its answers into the shell that ran us): filtered unless --raw.
    out = spawn(_pump_out(sock, Screen(1, filtered=not raw), True), "console")
    feed = spawn(_send_input(sock, sys.stdin.fileno()), "console-input")
    try:
        await asyncio.wait({out, feed}, return_when=asyncio.FIRST_COMPLETED)
        if feed.done() and not out.done():  # stdin ended: the guest has `timeout` to answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(out), timeout)
    finally:
        await sock.close()
        out.cancel()
        feed.cancel()
        with contextlib.suppress(BaseException):
            await out
        with contextlib.suppress(BaseException):
            await feed
    if out.done() and not out.cancelled():
        reason = out.result()
        if reason.startswith(name) and "writer" in reason:
            raise Conflict(reason)
    return 0


def run(
    layout: Layout,
    name: str,
    line: str,
    spy: bool,
    force: bool,
    timeout: float,
    scrollback: int,
    raw: bool = False,
) -> int:
    query = {
        "mode": "spy" if spy else "rw",
        "force": "1" if force else "0",
        "scrollback": str(scrollback),
    }
    if sys.stdin.isatty() and sys.stdout.isatty():
        return asyncio.run(interactive(layout, name, line, query, raw))
    return asyncio.run(scripted(layout, name, line, query, timeout, raw))
