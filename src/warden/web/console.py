"""One browser console: a websocket attached to a guest's terminal line, by the SSH
concentrator's rules.

The websocket becomes a daemon/lines.py `Client` of the `Line` (user: the logged-in owner,
source `web:ADDR:PORT`), so the arbitration is the one every console has: one writer, any
number of spies, a takeover (`force`) that demotes the writer and is logged; every byte typed
and every attach, detach and takeover goes to the line's session log, the same file an SSH
session writes. Output reaches the writer raw and spies filtered
(warden.console.screen.ClientScreen, with its CPU budget); old output (the scrollback shown on
attach) is filtered for everyone. A console without input for the fleet's
`[concentrator] idle_timeout` is detached, as an SSH session is.

Frames (docs/decisions/2026-12-07-web-console.md): binary frames both ways are terminal bytes;
text frames are JSON. Server to browser: {"attached": {"machine", "line", "mode"}},
{"mode": "rw"|"spy"}, {"notice": TEXT}, {"closed": REASON} (with "conflict": true and "writer":
WHO when the line has a writer already). Browser to server:
{"resize": [COLS, ROWS]}, {"detach": true}.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from warden import termsafe
from warden.console.screen import ClientScreen
from warden.daemon.lines import CLIENT_QUEUE, SCROLLBACK, Client, Line
from warden.errors import Conflict
from warden.tasks import spawn

log = logging.getLogger("warden.web")

INPUT_HIGH = 256 << 10  # stop reading the websocket while this much input waits for the guest
INPUT_POLL = 0.02
MAX_FRAME = 1 << 20  # a bigger frame from the browser closes the console (a paste is chunked)
MAX_COLS, MAX_ROWS = 1000, 500


class WebConsole:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        line: Line,
        user: str,
        source: str,
        spy: bool,
        force: bool,
        idle_timeout: Callable[[], int],
        activity: Callable[[], None],
    ):
        self.ws = ws
        self.line = line
        self.user = user
        self.source = source
        self.spy = spy
        self.force = force
        self.idle_timeout = idle_timeout
        self.activity = activity  # keeps the login session alive while someone types
        self.client: Client | None = None
        self.screen = ClientScreen()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.queued = 0
        self.ended = asyncio.Event()
        self.reason = ""
        self.last_input = 0.0
        self._idle: asyncio.TimerHandle | None = None

    @property
    def machine(self) -> str:
        return self.line.machine

    # ---- Line -> browser (called on the loop by the Line; must not block)
    def _send(self, data: bytes) -> None:
        if self.ended.is_set():
            return
        out, notices = self.screen.feed(data, self.client is not None and self.client.writer)
        for text in notices:
            self._notice(text)
        if not out:
            return
        self.queued += len(out)
        if self.queued > CLIENT_QUEUE:
            raise RuntimeError("client too slow")  # the Line drops this client
        self.queue.put_nowait(("data", out))

    def _notice(self, text: str) -> None:
        self.queue.put_nowait(("notice", termsafe.text(text)))
        mode = "rw" if self.client is not None and self.client.writer else "spy"
        self.queue.put_nowait(("mode", mode))  # a takeover demotes the writer with a notice

    def _dropped(self, reason: str) -> None:
        self.client = None  # the Line detached it already
        self.end(reason)

    def end(self, reason: str) -> None:
        """Detach and close (from anywhere: logout, a revoked guest, idleness, the Line)."""
        if self.ended.is_set():
            return
        self.reason = reason
        if self.client is not None:
            self.line.detach(self.client, reason)
            self.client = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.queue.put_nowait(("closed", reason))
        self.ended.set()

    # ---- the session
    async def run(self) -> None:
        client = Client(
            user=self.user,
            source=self.source,
            send=self._send,
            notify=self._notice,
            close=self._dropped,
        )
        try:
            self.line.attach(client, want_write=not self.spy, force=self.force)
        except Conflict as e:
            writer = self.line.writer()
            who = writer.describe() if writer is not None else ""
            await self.ws.send_json({"closed": str(e), "conflict": True, "writer": who})
            await self.ws.close()
            return
        self.client = client
        await self.ws.send_json(
            {
                "attached": {
                    "machine": self.line.machine,
                    "line": self.line.name,
                    "mode": "rw" if client.writer else "spy",
                    "running": self.line.open,
                }
            }
        )
        old = self.line.recent(SCROLLBACK)
        if old:
            # Old output, filtered even for the writer: its terminal would answer stale queries
            # into the guest as if typed (as the concentrator's --scrollback).
            self.queue.put_nowait(("data", termsafe.filter_bytes(old)))
        self.last_input = asyncio.get_running_loop().time()
        self._arm_idle()
        pump = spawn(self._pump(), f"web-console-out:{self.line.machine}:{self.line.name}")
        try:
            await self._read()
        finally:
            self.end(self.reason or "the browser closed the console")
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(pump, 2.0)
            pump.cancel()
            if not self.ws.closed:
                with contextlib.suppress(Exception):
                    await self.ws.close()

    async def _pump(self) -> None:
        try:
            await self._pump_until_closed()
        except ConnectionResetError:
            pass  # the browser went away; run() detaches

    async def _pump_until_closed(self) -> None:
        while True:
            kind, payload = await self.queue.get()
            if self.ws.closed:
                return
            if kind == "data":
                self.queued -= len(payload)
                await self.ws.send_bytes(payload)
            elif kind == "closed":
                await self.ws.send_json({"closed": payload})
                await self.ws.close()
                return
            else:
                await self.ws.send_json({kind: payload})
            # An idle console waits for its next message here: not holding the last one (the
            # scrollback sent on attach is up to 64 KiB per console).
            del payload

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for msg in self.ws:
            if self.ended.is_set():
                return
            if msg.type == WSMsgType.BINARY:
                if self.client is None:
                    return
                self.last_input = loop.time()
                self.activity()
                self.line.write(self.client, msg.data)
                while self.line.pending_input > INPUT_HIGH and not self.ended.is_set():
                    # The guest reads slower than the browser sends (a big paste): stop reading
                    # the websocket, so TCP holds the browser back instead of input being lost.
                    await asyncio.sleep(INPUT_POLL)
            elif msg.type == WSMsgType.TEXT:
                self._control(msg.data)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING):
                return

    def _control(self, text: str) -> None:
        try:
            ctl = json.loads(text)
        except ValueError:
            return
        if not isinstance(ctl, dict) or self.client is None:
            return
        if ctl.get("detach"):
            self.end("detached")
            return
        size = ctl.get("resize")
        if (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            and 0 < size[0] <= MAX_COLS
            and 0 < size[1] <= MAX_ROWS
        ):
            self.line.resize(self.client, size[0], size[1])

    def _arm_idle(self) -> None:
        timeout = self.idle_timeout()
        if timeout <= 0 or self.ended.is_set():
            return
        loop = asyncio.get_running_loop()
        remaining = self.last_input + timeout - loop.time()
        if remaining <= 0:
            self.end(f"no input for {timeout} s: detached")
            return
        self._idle = loop.call_later(remaining, self._arm_idle)
