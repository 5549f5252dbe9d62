"""The host side of the disguise channel: one server per honeypot guest, in asyncio.

`DisguiseServer.pair(profile)` makes the socketpair; the kernel gets `kernel_sock` (by fd
number, with `kernel_arg`), the server keeps the other end. `start()` sends the profile's
rule set (before the kernel boots, so it is in force from the first /proc access) and then
answers the kernel's filter requests; `set_profile()` replaces the rule set while the guest
runs; `stop()` ends it all. Each request is answered by its own task (a slow filter program
never holds up another request); every task is owned (warden.tasks) and ended by stop().

The kernel's messages are hostile input (docs/security.md, "Guest channels"): a guest that
loaded a module controls them. So the server reads at most DISGUISE_BATCH messages a wake-up,
answers requests within a per-guest rate and byte budget and at most DISGUISE_INFLIGHT at once
(a request over budget is not answered: the kernel serves the entry's fallback at its timeout,
and the refusals are counted and reported as one `disguise-flood` report per window), takes
only ACKs of rule sets it sent, and runs filter programs DISGUISE_PROGRAMS at a time, each in
`FilterBounds` (the guest's uid and cgroups, resource limits; filter_exec.py), its output cut
at TEXT_MAX and its whole process group killed at its timeout.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden import guestinput, tasks
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
ACKS_KEPT = 16  # the last ACKs, for status and waiters
FILTER_EXEC = Path(__file__).with_name("filter_exec.py")
NOBODY = 65534
# A filter program's limits: room for an interpreter, never for a runaway.
FILTER_RLIMITS: dict[str, tuple[int, int]] = {
    "as": (512 << 20, 512 << 20),
    "cpu": (5, 5),
    "nofile": (64, 64),
    "fsize": (16 << 20, 16 << 20),
    "core": (0, 0),
}


@dataclass(frozen=True)
class FilterBounds:
    """Where a filter program runs: the guest's uid and gid (or nobody's), its cgroups'
    cgroup.procs files (empty: the program's own cgroup is left as it is), rlimits."""

    uid: int = NOBODY
    gid: int = NOBODY
    cgroup_procs: tuple[str, ...] = ()
    rlimits: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(FILTER_RLIMITS))

    def argv(self, command: tuple[str, ...]) -> list[str]:
        spec = {
            "uid": self.uid,
            "gid": self.gid,
            "cgroup_procs": list(self.cgroup_procs),
            "rlimits": self.rlimits,
        }
        return [sys.executable, "-I", "-S", str(FILTER_EXEC), json.dumps(spec), *command]


@dataclass
class ServerStats:
    requests: int = 0
    replies: int = 0
    filter_failures: int = 0  # answered with the fallback's content
    protocol_errors: int = 0
    refused: int = 0  # requests over the guest's budget: not answered
    acks: list[Ack] = field(default_factory=list)


async def run_filter(command: tuple[str, ...], data: bytes, bounds: FilterBounds) -> bytes:
    """`command`'s output for `data` on its stdin, run within `bounds`; RuntimeError if it
    fails or prints more than TEXT_MAX bytes. The caller bounds its time (cancellation kills
    the program's whole process group)."""
    proc = await asyncio.create_subprocess_exec(
        *bounds.argv(command),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(data)
            await stdin.drain()
        stdin.close()

    async def collect() -> bytes:
        out = bytearray()
        while len(out) <= TEXT_MAX:
            chunk = await stdout.read(1 << 16)
            if not chunk:
                break
            out += chunk
        return bytes(out)

    try:
        _, out = await asyncio.gather(feed(), collect())
        if len(out) > TEXT_MAX:
            raise RuntimeError(f"{command[0]} printed more than {TEXT_MAX} bytes")
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if code != 0:
        raise RuntimeError(f"{command[0]} exited {code}")
    return out


async def render(
    profile: Profile,
    rule: ProcRule | None,
    request: Request,
    bounds: FilterBounds | None = None,
    programs: asyncio.Semaphore | None = None,
) -> bytes:
    """The content for a filter request: the rule's drop/sub, then its program, if any (run
    within `bounds`, at most as many at once as `programs` allows)."""
    if rule is None or rule.filter is None:
        return request.real  # the profile changed under the request: show what is real
    text = request.real.decode("utf-8", "surrogateescape")
    out = rule.filter.apply_lines(text).encode("utf-8", "surrogateescape")
    if rule.filter.command:
        async with asyncio.timeout(profile.timeout_of(rule) * COMMAND_SHARE):
            async with programs or asyncio.Semaphore(1):
                out = await run_filter(rule.filter.command, out, bounds or FilterBounds())
    if len(out) > TEXT_MAX:
        raise RuntimeError(f"filtered content of {len(out)} bytes > {TEXT_MAX}")
    return out


def fallback_content(rule: ProcRule | None, request: Request) -> bytes:
    if rule is None or rule.fallback == Fallback.REAL:
        return request.real
    return rule.text if rule.fallback == Fallback.TEXT else b""


Report = Callable[[str, dict[str, Any]], None]


class DisguiseServer:
    """`bounds`: where filter programs run (default: as nobody, in no guest cgroup);
    `report(kind, fields)`: where the counts of refused requests go (one report a window)."""

    def __init__(
        self,
        profile: Profile,
        sock: socket.socket,
        name: str = "guest",
        bounds: FilterBounds | None = None,
        report: Report | None = None,
    ):
        self.profile = profile
        self.sock = sock
        self.name = name
        self.bounds = bounds or FilterBounds()
        self.report = report
        self.generation = 0
        self.stats = ServerStats()
        self.kernel_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()
        self._acked = asyncio.Condition()
        self._programs = asyncio.Semaphore(guestinput.DISGUISE_PROGRAMS)
        self._budget = guestinput.disguise_requests()
        self._report_timer: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    def pair(
        cls,
        profile: Profile,
        name: str = "guest",
        bounds: FilterBounds | None = None,
        report: Report | None = None,
    ) -> "DisguiseServer":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        server = cls(profile, ours, name, bounds, report)
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
        for _ in range(guestinput.DISGUISE_BATCH):
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
                    self._take_request(req, len(packet))
                else:
                    raise DisguiseProtocolError(f"unexpected {msg.type.name} from the kernel")
            except DisguiseProtocolError as e:
                self.stats.protocol_errors += 1
                self._budget.refuse(time.monotonic(), "garbage", len(packet), str(e))
                self._schedule_report()

    def _take_request(self, req: Request, size: int) -> None:
        now = time.monotonic()
        if len(self._answering) >= guestinput.DISGUISE_INFLIGHT:
            self._budget.refuse(now, "too-many-at-once", size)
        elif self._budget.admit(now, size):
            t = tasks.spawn(self._answer(req), f"disguise {self.name} #{req.id}")
            for group in (self._tasks, self._answering):
                group.add(t)
                t.add_done_callback(group.discard)
            return
        self.stats.refused += 1
        self._schedule_report()

    def _schedule_report(self) -> None:
        deadline = self._budget.tally.deadline()
        if self._report_timer is not None or deadline is None or self._loop is None:
            return
        delay = max(0.0, deadline - time.monotonic())
        self._report_timer = self._loop.call_later(delay, self._send_report)

    def _send_report(self, force: bool = False) -> None:
        self._report_timer = None
        tally = self._budget.tally
        now = time.monotonic()
        report = tally.flush(now) if force else tally.due(now)
        if report is not None:
            if self.report is not None:
                self.report(tally.kind, report)
            else:
                log.warning("disguise channel of %s: %s", self.name, report["summary"])
        self._schedule_report()

    def _on_ack(self, ack: Ack) -> None:
        if not 0 < ack.generation <= self.generation or self._ack_of(ack.generation):
            raise DisguiseProtocolError(
                f"ACK of rule set {ack.generation}, which was not sent or was acked before "
                f"(last sent: {self.generation})"
            )
        self.stats.acks = [*self.stats.acks[-(ACKS_KEPT - 1) :], ack]
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
            content = await render(profile, rule, req, self.bounds, self._programs)
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
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None
        report = self._budget.tally.flush(time.monotonic())
        if report is not None and self.report is not None:
            self.report(self._budget.tally.kind, report)
        for t in list(self._tasks):
            await tasks.cancel(t)
        self.kernel_started()
        self.sock.close()

    async def __aenter__(self) -> "DisguiseServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
