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
APC, PM, SOS or terminal queries), as does any scrollback and a writer without a PTY; the
writer on a PTY gets the raw stream (its programs need their terminal's answers), `--raw` asks
for it as a spy or a script too
(docs/decisions/2026-12-07-operator-terminals.md).
"""

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import asyncssh

from warden.console import access, authlimit
from warden.console.session import Session
from warden.daemon.seam import Core
from warden.spec.fleet import Fleet
from warden.tasks import spawn

log = logging.getLogger("warden.concentrator")

HOST_KEY = "ssh_host_ed25519_key"
LOGIN_TIMEOUT = 30
KEEPALIVE = 60


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

    def __init__(self, core: Core):
        # asyncssh logs every connection at INFO; logins land in the daemon's events instead.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.core = core
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
        return self.core.fleet

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
            None, host_key, self.core.layout.keys
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
            self.core.event(None, "concentrator-failed", listen=conf.listen, error=str(e))
            log.error("concentrator: cannot listen on %s: %s", conf.listen, e)
            return
        self.core.event(None, "concentrator-listening", listen=conf.listen, port=self.port)

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
            self.conc.core.event(
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
        self.conc.core.event(None, "ssh-login", user=self.user, source=self.source)
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

    def session_requested(self) -> Session:
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
