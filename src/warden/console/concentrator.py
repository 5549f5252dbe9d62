"""The SSH console concentrator: guest owners reach their guests' terminal lines over SSH.

An asyncssh server in the daemon's event loop, on the fleet file's `[concentrator] listen`
address, with a host key made on first start in WARDEN_HOME/keys. Users are the fleet file's
[[owner]] tables (public keys, optional crypt(3) password hash, admin flag): no host accounts.
What a command means and who may reach what is decided in warden.console.access (sans-io);
this module performs it: each session attaches a daemon/lines.py `Client` to a `Line`, so the
arbitration (one writer, spies, forced takeover) and the session log are the same as for
`warden console`.

Refused with a message: shells (a shell request lists your guests instead), host commands,
scp/sftp/rsync, port forwarding (local, remote, UNIX), agent and X11 forwarding, tun/tap.

Logins are limited (warden.console.authlimit): a connection is closed after MAX_TRIES failed
attempts, a source address that keeps guessing passwords is slowed and then refused, and
crypt(3) runs on one worker thread of the concentrator's own with a bounded queue
(authlimit.CryptChecker), so a flood of passwords waits for itself and never for the daemon's
shared executor (a full queue refuses the attempt). Each connection remembers the key or
password hash it logged in with; when the fleet file no longer holds it, the connection is
closed.

A spy's terminal gets the guest's output through warden.termsafe.TerminalFilter (no OSC, DCS,
APC, PM, SOS or terminal queries), as does any scrollback; the writer gets the raw stream (its
programs need their terminal's answers), `--raw` asks for it as a spy too
(docs/decisions/2026-12-07-operator-terminals.md).
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from warden import termsafe
from warden.console import access, authlimit
from warden.console.screen import ClientScreen
from warden.daemon import machine as m
from warden.daemon.lines import CLIENT_QUEUE, Client, Line
from warden.errors import Conflict
from warden.spec.fleet import Fleet
from warden.tasks import spawn

if TYPE_CHECKING:
    from warden.daemon.core import Daemon

log = logging.getLogger("warden.concentrator")

HOST_KEY = "ssh_host_ed25519_key"
LOGIN_TIMEOUT = 30
KEEPALIVE = 60
INPUT_HIGH = 256 << 10  # pause reading a client while this much input waits for the guest
INPUT_POLL = 0.02
# A login credential: ("key", the key's public data) or ("password", the stored hash).
Credential = tuple[str, bytes | str]


def _now() -> float:
    return asyncio.get_running_loop().time()


def host_key(keys_dir: Path) -> asyncssh.SSHKey:
    """The concentrator's host key, made (ed25519, mode 0600) on first start."""
    path = keys_dir / HOST_KEY
    if not path.exists():
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="warden concentrator")
        tmp = path.with_name(f"{HOST_KEY}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key.export_private_key())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        key.write_public_key(str(path) + ".pub")
    return asyncssh.read_private_key(str(path))


class Concentrator:
    """A daemon service (start/stop/fleet_changed)."""

    def __init__(self, daemon: "Daemon"):
        # asyncssh logs every connection at INFO; logins land in the daemon's events instead.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.daemon = daemon
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.listen = ""
        self.conns: set[asyncssh.SSHServerConnection] = set()
        self.servers: set[Server] = set()
        self.sessions: set[Session] = set()
        self._restart: asyncio.Task[None] | None = None
        self.limiter = authlimit.SourceLimiter()
        self.crypt = authlimit.CryptChecker("concentrator")

    @property
    def fleet(self) -> Fleet:
        return self.daemon.c.fleet

    @property
    def port(self) -> int:
        return self.acceptor.get_port() if self.acceptor is not None else 0

    async def start(self) -> None:
        conf = self.fleet.concentrator
        self.listen = conf.listen
        if not conf.listen:
            return
        host, port = conf.host_port
        key = await asyncio.get_running_loop().run_in_executor(
            None, host_key, self.daemon.layout.keys
        )
        try:
            self.acceptor = await asyncssh.create_server(
                lambda: Server(self),
                host,
                port,
                server_host_keys=[key],
                encoding=None,
                login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=KEEPALIVE,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_scp=False,
                kbdint_auth=False,
                server_version="warden",
                reuse_address=True,
            )
        except OSError as e:
            self.daemon.c.event(None, "concentrator-failed", listen=conf.listen, error=str(e))
            log.error("concentrator: cannot listen on %s: %s", conf.listen, e)
            return
        self.daemon.c.event(None, "concentrator-listening", listen=conf.listen, port=self.port)

    async def stop(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            with contextlib.suppress(Exception):
                await self.acceptor.wait_closed()
            self.acceptor = None
        for s in list(self.sessions):
            s.end("the concentrator is stopping", 1)
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        self.crypt.close()

    def fleet_changed(self) -> None:
        # Who may reach what is read from the fleet at every request; sessions whose user
        # lost the guest are ended now, and connections whose login key or password hash
        # left the fleet are closed.
        for srv in list(self.servers):
            if srv.credential is not None and not self.credential_ok(srv.user, srv.credential):
                srv.revoke(f"the {srv.credential[0]} {srv.user} logged in with was removed")
        for s in list(self.sessions):
            if s.attached is not None and not self.may_reach(s.user, s.attached):
                s.end("your access to this guest was removed", 1)
        if self.fleet.concentrator.listen != self.listen:
            self._restart = spawn(self._relisten(), "concentrator-relisten")

    async def _relisten(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            await self.acceptor.wait_closed()
            self.acceptor = None
        await self.start()

    def may_reach(self, user: str, machine: str) -> bool:
        return any(mm.name == machine for mm in access.reachable(self.fleet, user))

    # ---- authentication (called by Server)
    def key_ok(self, user: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self._keys_of(user)

    def _keys_of(self, user: str) -> set[bytes]:
        keys = set()
        for text in access.owner_keys(self.fleet.owner(user)):
            try:
                keys.add(asyncssh.import_public_key(text).public_data)
            except (asyncssh.KeyImportError, ValueError):
                continue
        return keys

    def credential_ok(self, user: str, credential: Credential) -> bool:
        kind, value = credential
        if kind == "key":
            return value in self._keys_of(user)
        owner = self.fleet.owner(user)
        return owner is not None and bool(owner.password_hash) and owner.password_hash == value

    async def check_password(self, user: str, password: str) -> tuple[bool, str]:
        """(ok, the hash it matched); refused at once when CRYPT_QUEUE checks are pending."""
        owner = self.fleet.owner(user)
        stored = owner.password_hash if owner is not None else ""
        return bool(await self.crypt.check(stored, password)), stored

    def passwords_offered(self) -> bool:
        return any(o.password_hash for o in self.fleet.owners)


class Server(asyncssh.SSHServer):
    """One SSH connection."""

    def __init__(self, conc: Concentrator):
        self.conc = conc
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = "?"
        self.key = "?"  # the source's unit for authlimit
        self.user = ""
        self.failures = 0
        self.credential: Credential | None = None  # what the user logged in with
        self._offered: Credential | None = None  # the last key validate_public_key accepted

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.conc.conns.add(conn)
        self.conc.servers.add(self)
        peer = conn.get_extra_info("peername")
        if peer:
            self.source = f"{peer[0]}:{peer[1]}"
            self.key = authlimit.source_key(str(peer[0]))
        if self.conc.limiter.blocked(self.key, _now()):
            # Refused before key exchange: a blocked source costs no crypto and no crypt().
            log.info("concentrator: %s is blocked; connection refused", self.source)
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conc.conns.discard(self.conn)
        self.conc.servers.discard(self)

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True  # every user must authenticate, known or not: same answers for both

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.conc.key_ok(username, key):
            self._offered = ("key", key.public_data)
            return True
        log.info("concentrator: key refused for %r from %s", username, self.source)
        self._failed()
        return False

    def password_auth_supported(self) -> bool:
        return self.conc.passwords_offered()

    async def validate_password(self, username: str, password: str) -> bool:
        ok, stored = await self.conc.check_password(username, password)
        if ok:
            self._offered = ("password", stored)
            return True
        log.info("concentrator: password refused for %r from %s", username, self.source)
        now = _now()
        if self.conc.limiter.failed(self.key, now):
            self.conc.daemon.c.event(
                None,
                "ssh-source-blocked",
                source=self.key,
                failures=self.conc.limiter.failures,
                seconds=self.conc.limiter.block,
            )
        await asyncio.sleep(self.conc.limiter.delay(self.key, now))
        if self.conc.limiter.blocked(self.key, _now()):
            raise asyncssh.DisconnectError(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "warden: too many failed logins from your address; try again later",
            )
        self._failed()
        return False

    def _failed(self) -> None:
        """One more failed attempt on this connection; the last one allowed disconnects
        (raised from the validate callback: asyncssh sends the reason and closes)."""
        self.failures += 1
        if self.failures >= authlimit.MAX_TRIES:
            log.info("concentrator: %s: %d failed logins; disconnected", self.source, self.failures)
            raise asyncssh.DisconnectError(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                f"warden: too many authentication failures ({self.failures})",
            )

    def kbdint_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        self.credential = self._offered
        self.conc.daemon.c.event(None, "ssh-login", user=self.user, source=self.source)
        if self.credential is None or not self.conc.credential_ok(self.user, self.credential):
            # The fleet changed while this login was being checked.
            self.revoke(f"the credential {self.user} logged in with was removed")

    def revoke(self, why: str) -> None:
        """Close the connection: its login key or password is no longer in the fleet file."""
        log.info("concentrator: %s (%s): %s; disconnected", self.source, self.user, why)
        for s in list(self.conc.sessions):
            if s.server is self:
                s.end(f"[warden: {why}; disconnected]", 1)
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"warden: {why}")

    def session_requested(self) -> "Session":
        return Session(self.conc, self, self.user, self.source)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "warden: port forwarding is not offered (console concentrator only)",
        )

    def unix_connection_requested(self, dest_path: str) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "warden: forwarding is not offered (console concentrator only)",
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def tun_requested(self, unit: int | None) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "warden: tunnels are not offered"
        )

    def tap_requested(self, unit: int | None) -> bool:
        return self.tun_requested(unit)


class Session(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel: a listing, help, a refusal, or one attach to one line."""

    def __init__(self, conc: Concentrator, server: Server, user: str, source: str):
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
            sup = self.conc.daemon.sups.get(g.name)
            state = str(sup.machine.state) if sup is not None else "absent"
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
        sup = self.conc.daemon.sups.get(req.machine)
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
        if sup.machine.state is not m.State.RUNNING:
            self._notice(
                f"[warden: {req.machine} is not running ({sup.machine.state}); its output "
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
        """What this client's terminal may get: raw for the writer (and --raw), else
        filtered; a writer demoted to spy is filtered from then on."""
        out, notices = self.screen.feed(data, self.client is not None and self.client.writer)
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
