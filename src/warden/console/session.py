"""One SSH session of the concentrator (warden.console.concentrator): a listing, help, a
refusal, or one terminal attached to one guest line as the writer or a spy.

The guest's output reaches a spy through warden.termsafe.TerminalFilter within a CPU budget
(warden.console.screen, shared with the web console); the writer on a PTY gets the raw stream
(a writer without one is filtered, as a script's `warden console` is). Input
flows back under SSH flow control: a guest that reads slower than its writer types pauses the
channel instead of dropping input.
"""

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import asyncssh

from warden import termsafe
from warden.console import access
from warden.console.screen import ClientScreen
from warden.daemon import machine as m
from warden.daemon.lines import CLIENT_QUEUE, Client, Line
from warden.errors import Conflict

if TYPE_CHECKING:
    from warden.console.concentrator import Concentrator, Server

INPUT_HIGH = 256 << 10  # pause reading a client while this much input waits for the guest
INPUT_POLL = 0.02


class Session(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel: a listing, help, a refusal, or one attach to one line."""

    def __init__(self, conc: "Concentrator", server: "Server", user: str, source: str):
        self.conc = conc
        self.server = server
        self.user = user
        self.source = source
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.request: access.Request = access.Refuse("warden: no command")
        self.pty = False
        self.size: tuple[int, int] | None = None
        self.attached: str | None = None
        self.line: Line | None = None
        self.client: Client | None = None
        self.escape = access.EscapeFilter()
        self.screen = ClientScreen()  # raw for the writer, filtered for spies
        self.last_input = 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self.ended = False

    # ---- requests before the session starts
    def connection_made(self, chan: "asyncssh.SSHServerChannel[bytes]") -> None:
        self.chan = chan
        self.conc.sessions.add(self)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self.pty = True
        if term_size[0] and term_size[1]:
            self.size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        self.request = access.parse_command(None)
        return True

    def exec_requested(self, command: str) -> bool:
        self.request = access.parse_command(command)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        what = "SFTP" if subsystem == "sftp" else f"the {subsystem!r} subsystem"
        self.request = access.Refuse(f"warden: {what} is not offered (console concentrator only)")
        return True  # accepted, so that the client prints the reason we send

    def session_started(self) -> None:
        req = self.request
        if isinstance(req, access.Refuse):
            self.end(req.message, req.status, notice=False)
        elif isinstance(req, access.Help):
            self._out(access.HELP)
            self.end("", 0)
        elif isinstance(req, access.ListGuests):
            self._out(self._listing())
            self.end("", 0)
        else:
            self._attach(req)

    def _listing(self) -> str:
        guests = access.reachable(self.conc.fleet, self.user)
        if not guests:
            return f"{self.user}: no guests\n"
        admin = any(o.admin for o in self.conc.fleet.owners if o.name == self.user)
        rows = [("GUEST", "STATE", "LINES") + (("OWNER",) if admin else ())]
        for g in guests:
            sup = self.conc.core.guests.get(g.name)
            state = str(sup.state) if sup is not None else "absent"
            rows.append((g.name, state, " ".join(g.lines)) + ((g.owner,) if admin else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        text = "".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
            for r in rows
        )
        return text + "attach with: ssh -t ... NAME[:LINE] [--spy|--force]; `help` for more\n"

    # ---- attach
    def _attach(self, req: access.Attach) -> None:
        found = access.resolve(self.conc.fleet, self.user, req)
        sup = self.conc.core.guests.get(req.machine)
        if isinstance(found, access.Refuse) or sup is None:
            msg = (
                found.message
                if isinstance(found, access.Refuse)
                else (f"warden: no guest named {req.machine!r} that you can reach")
            )
            self.end(msg, 1, notice=False)
            return
        line = sup.lines.get(req.line)
        if line is None:
            self.end(f"warden: {req.machine} has no line {req.line!r} yet", 1, notice=False)
            return
        client = Client(
            user=self.user,
            source=f"ssh:{self.source}",
            send=self._send,
            notify=self._notice,
            close=self._dropped,
        )
        try:
            line.attach(client, want_write=not req.spy, force=req.force)
        except Conflict as e:
            self.end(f"warden: {e}", 1, notice=False)
            return
        self.line, self.client, self.attached = line, client, req.machine
        self.screen.raw = req.raw
        if self.size is not None:
            line.resize(client, *self.size)
        mode = "a spy (read-only)" if req.spy else "the writer"
        self._notice(f"[warden: attached to {req.machine} {req.line} as {mode}; Ctrl-] . detaches]")
        if sup.state is not m.State.RUNNING:
            self._notice(
                f"[warden: {req.machine} is not running ({sup.state}); its output "
                "appears here when it runs]"
            )
        if req.scrollback:
            # Old output, filtered even for the writer (unless --raw): its terminal would
            # answer stale queries into the guest as if typed.
            old = line.recent(req.scrollback)
            self._send(old if req.raw or not client.writer else termsafe.filter_bytes(old))
        loop = asyncio.get_running_loop()
        self.last_input = loop.time()
        self._arm_idle()

    def _arm_idle(self) -> None:
        timeout = self.conc.fleet.concentrator.idle_timeout
        if timeout <= 0 or self.ended:
            return
        loop = asyncio.get_running_loop()
        remaining = self.last_input + timeout - loop.time()
        if remaining <= 0:
            self.end(f"[warden: no input for {timeout} s: detached]", 0)
            return
        self._idle = loop.call_later(remaining, self._arm_idle)

    # ---- Line -> client
    def _send(self, data: bytes) -> None:
        chan = self.chan
        if chan is None or self.ended:
            return
        if chan.get_write_buffer_size() > CLIENT_QUEUE:
            raise RuntimeError("client too slow")  # Line drops this client
        chan.write(self._screen(data))

    def _screen(self, data: bytes) -> bytes:
        """What this client's terminal may get: raw for the writer on a PTY (and --raw),
        else filtered; a writer demoted to spy is filtered from then on. A writer without a
        PTY (`ssh -T ... web1 < script`, cron) has no terminal to answer a query: its output
        goes to a file or a pipe that someone later cats to a terminal, like `warden console`
        without a TTY, so it is filtered too."""
        writer = self.client is not None and self.client.writer and self.pty
        out, notices = self.screen.feed(data, writer)
        for text in notices:
            self._notice(text)
        return out

    def _notice(self, text: str) -> None:
        if self.chan is not None and not self.ended:
            self._err(text + "\n")

    def _dropped(self, reason: str) -> None:
        self.client = None  # the Line already detached it
        self.end(f"[warden: {reason}]", 1)

    def _out(self, text: str) -> None:
        if self.chan is not None:
            data = text.replace("\n", "\r\n") if self.pty else text
            self.chan.write(data.encode())

    def _err(self, text: str) -> None:
        if self.chan is not None:
            data = text.replace("\n", "\r\n") if self.pty else text
            self.chan.write_stderr(data.encode())

    # ---- client -> Line
    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.line is None or self.client is None:
            return
        self.last_input = asyncio.get_running_loop().time()
        for action, chunk in self.escape.feed(data):
            if action == "data":
                self.line.write(self.client, chunk)
            elif action == "help":
                self._err("\n" + access.HELP)
            elif action == "detach":
                self.end("[warden: detached]", 0)
                return
        if self.line.pending_input > INPUT_HIGH and self.chan is not None:
            # The guest reads slower than the client sends (a big paste): stop reading the
            # channel, so SSH flow control holds the client back instead of dropping input.
            self.chan.pause_reading()
            self._resume = asyncio.get_running_loop().call_later(INPUT_POLL, self._maybe_resume)

    def _maybe_resume(self) -> None:
        self._resume = None
        if self.ended or self.chan is None:
            return
        if self.line is not None and self.line.pending_input > INPUT_HIGH // 2:
            self._resume = asyncio.get_running_loop().call_later(INPUT_POLL, self._maybe_resume)
            return
        self.chan.resume_reading()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.size = (width, height)
        if self.line is not None and self.client is not None:
            self.line.resize(self.client, width, height)

    def break_received(self, msec: int) -> bool:
        return False

    def eof_received(self) -> bool:
        self.end("", 0, reason="the client closed its input")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._detach("connection closed" if exc is None else f"connection lost: {exc}")
        self.ended = True
        self.conc.sessions.discard(self)
        self._cancel_timers()

    # ---- ending
    def _detach(self, reason: str) -> None:
        if self.line is not None and self.client is not None:
            self.line.detach(self.client, reason)
        self.client = None
        self.line = None

    def _cancel_timers(self) -> None:
        for t in (self._idle, self._resume):
            if t is not None:
                t.cancel()
        self._idle = self._resume = None

    def end(self, message: str, status: int, notice: bool = True, reason: str = "") -> None:
        if self.ended:
            return
        text = message.strip().removeprefix("[").removesuffix("]").removeprefix("warden: ")
        self._detach(reason or text or "detached")
        self._cancel_timers()
        self.ended = True
        if self.chan is not None:
            if message:
                self._err(("\n" if notice and self.pty else "") + message + "\n")
            with contextlib.suppress(Exception):
                self.chan.exit(status)
        self.conc.sessions.discard(self)
