"""One running honeypot guest's host side, for one boot: its tty log and its disguise server.

The tty log: messages from the kernel's SEQPACKET socket (warden.honeypot.ingest) go, record
by record and verbatim, into the session log `tty-BOOT.wlog` (type TTYLOG) with the kernel's
own timestamps; what the ingest notes (the stream header, losses, damage) goes into the same
log as events and, for losses, into the daemon's events. Every POLL_INTERVAL the kernel's own
counters are read over the mconsole (`ttylog`), which is the only way to learn about records
the kernel could not write at all (its log stopped, or its buffer overflowed after the host
stopped reading).

The disguise: a DisguiseServer (warden.honeypot.disguise_server) on the channel's host end.
"""

import asyncio
import contextlib
import logging
import os
import select
import socket
from collections.abc import Coroutine
from typing import Any

from warden import proc, tasks
from warden.daemon import machine as m
from warden.daemon.seam import Core, Guest
from warden.errors import WardenError
from warden.honeypot.channels import PotState, write_state
from warden.honeypot.disguise_server import DisguiseServer
from warden.honeypot.ingest import MESSAGE_MAX, Note, Stored, TtyLogIngest
from warden.honeypot.profile import Profile
from warden.sessionlog import codec as sl
from warden.sessionlog.ttylog import KernelStats, parse_stats

log = logging.getLogger("warden.honeypot")

POLL_INTERVAL = 10.0
READ_BATCH = 64  # messages per wake-up, so one busy guest cannot hold the loop
READ_BYTES = 256 << 10  # nor bytes: 64 full messages would be 4 MiB of records to decode
ACK_WAIT = 24 * 3600.0  # a rule set is acked at the guest's next /proc access: maybe late


class PotGuest:
    def __init__(self, guest: Guest, core: Core, state: PotState):
        self.guest = guest
        self.core = core
        self.name = guest.name
        self.state = state
        self.dir = core.layout.machine(guest.name)
        self.ingest = TtyLogIngest()
        self.tty_sock: socket.socket | None = None
        self.log: Any = None  # the tty session log (a LineLog with .record)
        self.tty_status = "off"  # off | waiting | reading | closed | ended
        self.tty_problem = ""
        self.kernel: KernelStats | None = None
        self.kernel_error = ""
        self._reported_lost = 0
        self.disguise: DisguiseServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.done = False

    # ---- tasks ---------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        t = tasks.spawn(coro, f"honeypot {self.name} {what}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for t in list(self._tasks):
            if t is not current:
                await tasks.cancel(t)

    # ---- reporting -----------------------------------------------------------------------
    def note(self, kind: str, daemon_event: bool, **fields: Any) -> None:
        """Into the tty log (if any) and, if `daemon_event`, the daemon's events."""
        if self.log is not None:
            self.log.event(kind, **fields)
        if daemon_event:  # what the kernel sends: within the guest's event budget
            self.core.guest_event(self.name, kind, boot=self.state.boot, **fields)

    # ---- the tty log -----------------------------------------------------------------------
    def start_tty(self, sock: socket.socket, log_: Any, ingest: TtyLogIngest) -> None:
        self.tty_sock = sock
        self.log = log_
        self.ingest = ingest
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.tty_status = "reading"
        self.spawn(self._poll_loop(), "ttylog poll")

    def _readable(self) -> None:
        self.drain(READ_BATCH)

    def drain(self, limit: int | None = None) -> None:
        """Take what the socket holds now (at most `limit` messages)."""
        n = size = 0
        while self.tty_sock is not None and self.tty_status == "reading":
            if limit is not None and (n >= limit or size >= READ_BYTES):
                return
            try:
                msg = self.tty_sock.recv(MESSAGE_MAX)
            except BlockingIOError:
                return
            except OSError as e:
                self._eof(f"reading the tty log failed: {e.strerror}")
                return
            if not msg and self._hung_up():
                self._eof("")
                return
            self._take(msg)
            n += 1
            size += len(msg)

    def _hung_up(self) -> bool:
        assert self.tty_sock is not None
        p = select.poll()
        p.register(self.tty_sock.fileno(), select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in p.poll(0))

    def _take(self, msg: bytes) -> None:
        for item in self.ingest.feed(msg):
            if isinstance(item, Stored):
                if self.log is not None and hasattr(self.log, "record"):
                    self.log.record(sl.TTYLOG, item.raw, item.time_us)
            else:
                self._on_note(item)

    def _on_note(self, n: Note) -> None:
        self.note(n.kind, n.is_loss or n.kind == "ttylog-resumed", **n.fields)

    def _stop_reading(self) -> None:
        if self.tty_sock is not None and self._loop is not None and self.tty_status == "reading":
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tty_sock.fileno())

    def _eof(self, problem: str) -> None:
        self._stop_reading()
        alive = not self.done and proc.running(self.state.pid, self.state.pid_start)
        self.tty_status = "closed" if alive else "ended"
        if not alive:
            return
        # The kernel runs on, but the host end of its log is gone: it stops logging at its
        # next write (EPIPE) and says so in its counters, which the polls below report.
        self.tty_problem = problem or "the host end of the tty log was closed"
        c = self.ingest.counters
        self.note(
            "ttylog-closed",
            True,
            reason=self.tty_problem + " while the guest runs: nothing it does from now on is "
            "recorded in this log",
            last_seq=c.last_seq,
            records=c.records,
        )

        async def soon() -> None:
            for delay in (0.0, 1.0, 3.0):
                await asyncio.sleep(delay)
                await self.poll()

        self.spawn(soon(), "ttylog poll after close")

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self.poll()

    async def poll(self) -> None:
        """The kernel's own counters; report a stopped log or records it could not write."""
        if self.guest.state is not m.State.RUNNING or self.done:
            return
        try:
            stats = parse_stats(await self.guest.request("ttylog", timeout=5.0))
        except (WardenError, TimeoutError) as e:
            self.kernel_error = str(e) or type(e).__name__
            return
        self.kernel_error = ""
        prev, self.kernel = self.kernel, stats
        lost = stats.lost_records
        if stats.state not in ("on",) and (prev is None or prev.state != stats.state):
            self._reported_lost = lost
            errno = stats.stopped_errno
            self.note(
                "ttylog-stopped",
                True,
                state=stats.state,
                error=os.strerror(errno) if errno else "",
                records=stats.records,
                lost_records=lost,
                lost_bytes=stats.lost_bytes,
            )
        elif lost > self._reported_lost and lost > self.ingest.counters.kernel_lost_records:
            self._reported_lost = lost
            self.note(
                "ttylog-lost",
                True,
                state=stats.state,
                lost_records=lost,
                lost_bytes=stats.lost_bytes,
                note="the kernel's own count of records it never wrote, this boot",
            )

    # ---- the disguise ------------------------------------------------------------------------
    def watch_ack(self, generation: int, profile: Profile) -> None:
        server = self.disguise
        if server is None:
            return

        async def wait() -> None:
            try:
                ack = await server.wait_ack(generation, ACK_WAIT)
            except TimeoutError:
                return
            kind = "disguise-applied" if ack.status == 0 else "disguise-refused"
            self.core.event(
                self.name,
                kind,
                boot=self.state.boot,
                profile=profile.name,
                source=profile.source,
                generation=generation,
                entries=ack.entries,
                cpuid_faulting=ack.cpuid_faulting,
                status=ack.status,
            )

        self.spawn(wait(), f"disguise ack {generation}")

    def set_profile(self, profile: Profile, ref: str) -> int | None:
        """Put `profile` in force in the running guest; its generation (None: no change)."""
        server = self.disguise
        if server is None or server.closed or profile == server.profile:
            return None
        generation = server.set_profile(profile)
        self.state.profile = ref
        self.state.generation = generation
        self.save()
        self.core.event(
            self.name,
            "disguise-sent",
            boot=self.state.boot,
            profile=profile.name,
            source=profile.source,
            generation=generation,
        )
        self.watch_ack(generation, profile)
        return generation

    # ---- life ------------------------------------------------------------------------------
    def save(self) -> None:
        if self.disguise is not None:
            self.state.generation = self.disguise.generation
        with contextlib.suppress(OSError):
            write_state(self.dir, self.state)

    async def finish(self, reason: str) -> None:
        """The kernel is gone: store what it sent last, close everything."""
        self.done = True
        await self._cancel_tasks()
        if self.tty_status == "reading":
            self.drain()
        for n in self.ingest.flush():
            self._on_note(n)
        self._stop_reading()
        if self.tty_status == "reading":
            self.tty_status = "ended"
        if self.tty_sock is not None:
            self.tty_sock.close()
            self.tty_sock = None
        if self.log is not None:
            c = self.ingest.counters
            self.log.event(
                "ttylog-end",
                records=c.records,
                last_seq=c.last_seq,
                kernel_lost_records=c.kernel_lost_records,
                host_lost_records=c.host_lost_records,
                damaged_messages=c.damaged_messages,
            )
            self.log.event("boot-end", reason=reason)
            self.log.close()
            self.log = None
        if self.disguise is not None:
            await self.disguise.stop()

    async def detach(self) -> None:
        """The daemon leaves and the guest stays: the kernel keeps both channels alive (their
        spare ends), the next daemon takes them back (see channels.py)."""
        self.done = True
        await self._cancel_tasks()
        if self.tty_status == "reading":
            self.drain()
        for n in self.ingest.flush():
            self._on_note(n)
        self._stop_reading()
        if self.tty_sock is not None:
            self.tty_sock.close()
            self.tty_sock = None
        if self.log is not None:
            self.log.event("daemon-detach")
            self.log.close()
            self.log = None
        self.save()
        if self.disguise is not None:
            await self.disguise.stop()

    def status(self) -> dict[str, Any]:
        c = self.ingest.counters
        out: dict[str, Any] = {
            "name": self.name,
            "boot": self.state.boot,
            "pid": self.state.pid,
            "tty_log": None,
            "disguise": None,
        }
        if self.state.ttylog is not None:
            k = self.kernel
            out["tty_log"] = {
                "status": self.tty_status,
                "problem": self.tty_problem,
                **c.as_dict(),
                "kernel": None
                if k is None
                else {
                    "state": k.state,
                    "records": k.records,
                    "bytes": k.bytes,
                    "lost_records": k.lost_records,
                    "lost_bytes": k.lost_bytes,
                },
                "kernel_error": self.kernel_error,
            }
        d = self.disguise
        if d is not None:
            acked = [a for a in d.stats.acks if a.status == 0]
            out["disguise"] = {
                "profile": d.profile.name,
                "source": d.profile.source,
                "generation": d.generation,
                "acked_generation": acked[-1].generation if acked else 0,
                "cpuid_faulting": acked[-1].cpuid_faulting if acked else None,
                "requests": d.stats.requests,
                "replies": d.stats.replies,
                "filter_failures": d.stats.filter_failures,
                "protocol_errors": d.stats.protocol_errors,
                "running": not d.closed,
            }
        return out
