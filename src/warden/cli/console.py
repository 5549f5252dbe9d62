"""`warden console NAME [--line L]`: a guest's terminal line, through the daemon.

On a TTY: interactive, raw mode; Ctrl-] detaches (telnet's and virsh's escape; it never needs
to reach a guest). Otherwise: stdin is written to the line and what the line prints is copied
to stdout until stdin ends plus --timeout seconds, so scripts and tests can drive a guest.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from typing import Any

import aiohttp

from warden.errors import Conflict, DaemonNotRunning, WardenError
from warden.paths import Layout
from warden.tasks import spawn

ESCAPE = 0x1D  # Ctrl-]


async def _connect(layout: Layout, name: str, line: str, query: dict[str, str]) -> Any:
    connector = aiohttp.UnixConnector(path=str(layout.socket))
    session = aiohttp.ClientSession(connector=connector)
    url = f"http://warden/v1/machines/{name}/lines/{line}/attach"
    try:
        ws = await session.ws_connect(url, params=query, max_msg_size=8 << 20, heartbeat=30)
    except aiohttp.ClientConnectorError:
        await session.close()
        raise DaemonNotRunning(
            f"no warden daemon answers on {layout.socket}; start one with `warden daemon`"
        ) from None
    except aiohttp.WSServerHandshakeError as e:
        await session.close()
        raise WardenError(f"console {name}:{line}: {e.message}") from None
    return session, ws


async def _pump_out(ws: Any, out_fd: int, quiet: bool) -> str:
    """Copy the guest's output to out_fd; returns why the stream ended."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            os.write(out_fd, msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            ctl = json.loads(msg.data)
            if "closed" in ctl:
                return str(ctl["closed"])
            if "notice" in ctl and not quiet:
                os.write(2, f"\r\n{ctl['notice']}\r\n".encode())
        else:
            break
    return "connection closed"


async def interactive(layout: Layout, name: str, line: str, query: dict[str, str]) -> int:
    session, ws = await _connect(layout, name, line, query)
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
                spawn(ws.send_bytes(head), "console")
            done.set()
            return
        spawn(ws.send_bytes(data), "console")

    def on_winch() -> None:
        cols, rows = os.get_terminal_size(fd)
        spawn(ws.send_json({"resize": [cols, rows]}), "console")

    os.write(2, f"[warden: attached to {name} {line}; Ctrl-] detaches]\r\n".encode())
    tty.setraw(fd)
    loop.add_reader(fd, on_input)
    loop.add_signal_handler(signal.SIGWINCH, on_winch)
    on_winch()
    out = spawn(_pump_out(ws, 1, False), "console")
    waiter = spawn(done.wait(), "console")
    try:
        finished, _ = await asyncio.wait({out, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if out in finished:
            reason[0] = out.result()
    finally:
        loop.remove_reader(fd)
        loop.remove_signal_handler(signal.SIGWINCH)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            await ws.send_json({"detach": True})
        await ws.close()
        await session.close()
        for t in (out, waiter):
            t.cancel()
    os.write(2, f"\r\n[warden: {reason[0]}]\r\n".encode())
    return 0


async def scripted(
    layout: Layout, name: str, line: str, query: dict[str, str], timeout: float
) -> int:
    session, ws = await _connect(layout, name, line, query)
    loop = asyncio.get_running_loop()
    out = spawn(_pump_out(ws, 1, True), "console")
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await ws.send_bytes(data)
            if out.done():
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(out), timeout)
    finally:
        with contextlib.suppress(Exception):
            await ws.send_json({"detach": True})
        await ws.close()
        await session.close()
        out.cancel()
    if out.done() and not out.cancelled():
        reason = out.result()
        if reason.startswith(name) and "writer" in reason:
            raise Conflict(reason)
    return 0


def run(
    layout: Layout, name: str, line: str, spy: bool, force: bool, timeout: float, scrollback: int
) -> int:
    query = {
        "mode": "spy" if spy else "rw",
        "force": "1" if force else "0",
        "scrollback": str(scrollback),
    }
    if sys.stdin.isatty() and sys.stdout.isatty():
        return asyncio.run(interactive(layout, name, line, query))
    return asyncio.run(scripted(layout, name, line, query, timeout))
