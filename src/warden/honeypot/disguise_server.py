"""The host side of the disguise channel: one server per honeypot guest, in asyncio.

`DisguiseServer.pair(profile)` makes the socketpair; the kernel gets `kernel_sock` (by fd
number, with `kernel_arg`), the server keeps the other end. `start()` sends the profile's
rule set (before the kernel boots, so it is in force from the first /proc access) and then
answers the kernel's filter requests; `set_profile()` replaces the rule set while the guest
runs; `stop()` ends it all. Each request is answered by its own task (a slow filter program
never holds up another request); every task is owned (warden.tasks) and ended by stop().
"""

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from warden import tasks
from warden.honeypot.disguise_wire import (
    TEXT_MAX,
    Ack,
    DisguiseProtocolError,
    Fallback,
    MsgType,
    Request,
    decode_ack,
    decode_message,
    decode_request,
    encode_message,
    encode_reply,
    encode_ruleset,
)
from warden.honeypot.profile import ProcRule, Profile

log = logging.getLogger("warden.honeypot.disguise")
RECV_MAX = 16 + 16 + 64 + TEXT_MAX  # the largest REQUEST the kernel sends
COMMAND_SHARE = 0.8  # a filter program gets this share of the kernel's wait


@dataclass
class ServerStats:
    requests: int = 0
    replies: int = 0
    filter_failures: int = 0  # answered with the fallback's content
    protocol_errors: int = 0
    acks: list[Ack] = field(default_factory=list)


async def render(profile: Profile, rule: ProcRule | None, request: Request) -> bytes:
    """The content for a filter request: the rule's drop/sub, then its program, if any."""
    if rule is None or rule.filter is None:
        return request.real  # the profile changed under the request: show what is real
    text = request.real.decode("utf-8", "surrogateescape")
    out = rule.filter.apply_lines(text).encode("utf-8", "surrogateescape")
    if rule.filter.command:
        proc = await asyncio.create_subprocess_exec(
            *rule.filter.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, _ = await asyncio.wait_for(
                proc.communicate(out), profile.timeout_of(rule) * COMMAND_SHARE
            )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{rule.filter.command[0]} exited {proc.returncode}")
        out = stdout
    if len(out) > TEXT_MAX:
        raise RuntimeError(f"filtered content of {len(out)} bytes > {TEXT_MAX}")
    return out


def fallback_content(rule: ProcRule | None, request: Request) -> bytes:
    if rule is None or rule.fallback == Fallback.REAL:
        return request.real
    return rule.text if rule.fallback == Fallback.TEXT else b""


class DisguiseServer:
    def __init__(self, profile: Profile, sock: socket.socket, name: str = "guest"):
        self.profile = profile
        self.sock = sock
        self.name = name
        self.generation = 0
        self.stats = ServerStats()
        self.kernel_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._acked = asyncio.Condition()
        self.closed = False

    @classmethod
    def pair(cls, profile: Profile, name: str = "guest") -> "DisguiseServer":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        server = cls(profile, ours, name)
        server.kernel_sock = theirs
        return server

    @property
    def kernel_fd(self) -> int:
        if self.kernel_sock is None:
            raise DisguiseProtocolError("the disguise socket's kernel end was already closed")
        return self.kernel_sock.fileno()

    @property
    def kernel_arg(self) -> str:
        return f"disguise_fd={self.kernel_fd}"

    def kernel_started(self) -> None:
        """The kernel holds its end now: close the host's copy (EOF reaches us at its end)."""
        if self.kernel_sock is not None:
            self.kernel_sock.close()
            self.kernel_sock = None

    def _send_ruleset(self) -> None:
        self.generation += 1
        body = encode_ruleset(self.profile.ruleset())
        # the kernel reads only when the guest touches /proc; a rule set waits in the socket
        self.sock.setblocking(True)
        try:
            self.sock.send(encode_message(MsgType.RULESET, self.generation, body))
        finally:
            self.sock.setblocking(False)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._send_ruleset()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def set_profile(self, profile: Profile) -> int:
        """Put `profile` in force; returns its generation (the kernel acks it when it reads)."""
        self.profile = profile
        self._send_ruleset()
        return self.generation

    async def wait_ack(self, generation: int, timeout: float) -> Ack:
        """The kernel's ACK of a rule set (it comes at the guest's next /proc access)."""
        async with self._acked:
            await asyncio.wait_for(
                self._acked.wait_for(lambda: self._ack_of(generation) is not None), timeout
            )
        ack = self._ack_of(generation)
        assert ack is not None
        return ack

    def _ack_of(self, generation: int) -> Ack | None:
        return next((a for a in self.stats.acks if a.generation == generation), None)

    def _readable(self) -> None:
        while True:
            try:
                packet = self.sock.recv(RECV_MAX)
            except BlockingIOError:
                return
            except OSError as e:
                log.info("disguise channel of %s: %s", self.name, e)
                self._stop_reading()
                return
            if not packet:  # the kernel is gone
                self._stop_reading()
                return
            try:
                msg = decode_message(packet)
                if msg.type == MsgType.ACK:
                    self._on_ack(decode_ack(msg))
                elif msg.type == MsgType.REQUEST:
                    req = decode_request(msg)
                    self.stats.requests += 1
                    t = tasks.spawn(self._answer(req), f"disguise {self.name} #{req.id}")
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
                else:
                    raise DisguiseProtocolError(f"unexpected {msg.type.name} from the kernel")
            except DisguiseProtocolError as e:
                self.stats.protocol_errors += 1
                log.warning("disguise channel of %s: %s", self.name, e)

    def _on_ack(self, ack: Ack) -> None:
        self.stats.acks.append(ack)
        if ack.status != 0:
            log.warning(
                "kernel of %s refused disguise rule set %d: errno %d",
                self.name,
                ack.generation,
                -ack.status,
            )

        async def notify() -> None:
            async with self._acked:
                self._acked.notify_all()

        t = tasks.spawn(notify(), f"disguise {self.name} ack {ack.generation}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _answer(self, req: Request) -> None:
        profile = self.profile
        rule = profile.rule(req.path)
        try:
            content = await render(profile, rule, req)
        except (OSError, RuntimeError, TimeoutError) as e:
            self.stats.filter_failures += 1
            log.info("disguise filter %s for %s failed: %s", req.path, self.name, e)
            content = fallback_content(rule, req)
        if self.closed:
            return
        try:
            self.sock.send(encode_reply(req.id, content))
            self.stats.replies += 1
        except (BlockingIOError, OSError) as e:  # the kernel serves its fallback
            log.info("disguise reply to %s failed: %s", self.name, e)

    def _stop_reading(self) -> None:
        if self._loop is not None and not self.closed:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    async def stop(self) -> None:
        if self.closed:
            return
        self._stop_reading()
        self.closed = True
        for t in list(self._tasks):
            await tasks.cancel(t)
        self.kernel_started()
        self.sock.close()

    async def __aenter__(self) -> "DisguiseServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
