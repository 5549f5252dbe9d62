"""The fleet's `[[pool]]`s in the daemon: a thin driver of poolpolicy over the gate (poolgate.py)
and the core's machine control.

Every POLL seconds it asks the gate what the kernel did (claims, activity, addresses that
found no warm guest, probe results) and tells each pool's policy; once a second it ticks the
policies; it carries out their commands: Start and Recycle through Core.control and forensics'
recycle (evidence kept), the rest through the gate. A guest counts as warm once the gate's
probe got the first byte of its service on the pool's port.
"""

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import Core
from warden.errors import WardenError
from warden.forensics import poolpolicy as pp
from warden.forensics.operations import Operations
from warden.spec.pool import Pool
from warden.tasks import cancel, spawn

log = logging.getLogger("warden.forensics.pool")
POLL = 0.25
TICK = 1.0
BOOT_TIMEOUT = 180.0  # from a start to a running kernel
PROBE_TIMEOUT = 120.0  # from a running kernel to its service's first byte
CALL_TIMEOUT = 30.0
MAX_MESSAGE = 256 * 1024


class GateClient:
    """The daemon's end of the gate: one request at a time, answered in order."""

    def __init__(self, netns: str, logfile: Path):
        self.netns, self.logfile = netns, logfile
        self.sock: socket.socket | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> "GateClient":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.logfile, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warden.forensics.poolgate",
                str(theirs.fileno()), self.netns,
                pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True,
            )  # fmt: skip
        finally:
            logf.close()
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        try:
            await self._receive()
        except WardenError:
            await self.close()
            raise
        return self

    async def _receive(self) -> Any:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        try:
            msg = await asyncio.wait_for(loop.sock_recv(self.sock, MAX_MESSAGE), CALL_TIMEOUT)
        except (TimeoutError, OSError) as e:
            raise WardenError(f"the pool gate did not answer: {e or type(e).__name__}") from None
        if not msg:
            tail = self.logfile.read_text(errors="replace")[-800:] if self.logfile.exists() else ""
            raise WardenError(f"the pool gate exited: {tail.strip()}")
        reply = json.loads(msg)
        if "error" in reply:
            raise WardenError(f"the pool gate: {reply['error']}")
        return reply["ok"]

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            if self.sock is None:
                raise WardenError("the pool gate is not running")
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(self.sock, json.dumps({"op": op, **args}).encode())
            return await self._receive()

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
            self.proc = None


def gate_pools(pools: tuple[Pool, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "listen": p.listen,
            "port": p.guest_port,
            "wait": p.wait,
            "guests": [[p.guest_name(i), a] for i, a in enumerate(p.addresses)],
        }
        for p in pools
    ]


class PoolDriver:
    def __init__(self, core: Core, ops: Operations):
        self.core, self.ops = core, ops
        self.gate: GateClient | None = None
        self.pools: tuple[Pool, ...] = ()
        self.policies: dict[str, pp.PoolPolicy] = {}
        self.pool_of: dict[str, Pool] = {}  # guest -> its pool
        # Guests a start or recycle task is bringing up, with the start() it belongs to.
        self.busy: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()
        self.gen = 0  # which start() the policies belong to

    # ---- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """The fleet's pools, from scratch: a fresh table (one transaction, so a gate that
        served the previous fleet's pools never leaves the port open in between), new
        policies; guests already running are recycled before anyone gets them."""
        self.gen += 1
        self.pools = self.core.fleet.pools
        self.policies.clear()
        self.pool_of.clear()
        if not self.pools:
            await self._close_gate()
            return
        if self.gate is None:
            log_path = self.core.layout.home / "logs" / "pool-gate.log"
            self.gate = await GateClient(self.core.fleet.host.netns, log_path).start()
        await self.gate.call("setup", pools=gate_pools(self.pools))
        self.core.event(None, "pools-set", pools=",".join(p.name for p in self.pools))
        now = time.monotonic()
        running = {g.name for g in self.core.guests if g.state in m.LIVE}
        for p in self.pools:
            policy = pp.PoolPolicy(
                list(p.guests),
                size=p.size,
                idle=p.idle,
                wait=p.wait,
                claim_timeout=p.claim_timeout,
            )
            self.policies[p.name] = policy
            for g in p.guests:
                self.pool_of[g] = p
            await self._run(p, policy.adopt(running & set(p.guests), now))
        self._task = spawn(self._loop(), "pool driver")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self.gen += 1  # bring-ups still running leave the policies and the gate alone
        await self._close_gate()
        self.policies.clear()
        self.pool_of.clear()

    async def _close_gate(self) -> None:
        if self.gate is not None:
            await self.gate.close()
            self.gate = None

    def fleet_changed(self) -> None:
        if self.core.fleet.pools != self.pools:
            spawn(self._apply(), "pool driver: new fleet")

    async def _apply(self) -> None:
        async with self._applying:
            await cancel(self._task)
            self._task = None
            await self.start()

    # ---- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        last_tick = 0.0
        while True:
            await asyncio.sleep(POLL)
            try:
                await self._poll(time.monotonic())
                now = time.monotonic()
                if now - last_tick >= TICK:
                    last_tick = now
                    for p in self.pools:
                        await self._run(p, self._watch_states(p, now))
                        await self._run(p, self.policies[p.name].tick(now))
            except WardenError as e:
                log.warning("pool: %s", e)

    async def _poll(self, now: float) -> None:
        assert self.gate is not None
        seen = await self.gate.call("poll")
        for p in self.pools:
            policy = self.policies[p.name]
            got = seen["pools"].get(p.name, {})
            for guest, src in got.get("claims", []):
                if guest in policy.state and policy.src_of(guest) != src:
                    cmds = policy.claimed(src, guest, now)
                    if policy.src_of(guest) == src:
                        self.core.event(guest, "pool-claimed", pool=p.name, src=src)
                    await self._run(p, cmds)
            for src in got.get("waiting", []):
                await self._run(p, policy.waiting_src(src, now))
            policy.seen(set(got.get("seen", [])), now)
            policy.confirmed(set(got.get("handshakes", [])), now)
        for guest, seconds in seen.get("probes", {}).items():
            owner = self.pool_of.get(guest)
            if owner is None:
                continue
            p = owner
            if self.busy.get(guest) != self.gen:
                continue  # a probe for a previous fleet's pools
            del self.busy[guest]
            policy = self.policies[p.name]
            if seconds is None:
                self.core.event(guest, "pool-failed", pool=p.name, error="no service answered")
                await self._run(p, policy.failed(guest, now))
            else:
                self.core.event(guest, "pool-warm", pool=p.name, probe=round(seconds, 3))
                await self._run(p, policy.ready(guest, now))

    def _watch_states(self, p: Pool, now: float) -> list[pp.Command]:
        """Guests the policy counts on that are not running (crashed, stopped by hand)."""
        policy = self.policies[p.name]
        out: list[pp.Command] = []
        for name in p.guests:
            if name in self.busy or policy.slot(name) not in (pp.Slot.WARM, pp.Slot.TAKEN):
                continue
            guest = self.core.guests.get(name)
            if guest is None or guest.state is not m.State.RUNNING:
                self.core.event(name, "pool-failed", pool=p.name, error="not running")
                out += policy.failed(name, now)
        return out

    # ---- commands ----------------------------------------------------------------------------
    async def _run(self, p: Pool, cmds: list[pp.Command]) -> None:
        assert self.gate is not None
        policy = self.policies[p.name]
        for c in cmds:
            if isinstance(c, pp.Start | pp.Recycle):
                self.busy[c.guest] = self.gen
                reason = c.reason if isinstance(c, pp.Recycle) else "pool: refill"
                spawn(self._bring_up(p, c.guest, reason), f"pool:{c.guest}")
            elif isinstance(c, pp.Offer):
                await self.gate.call("offer", pool=p.name, warm=list(c.guests))
            elif isinstance(c, pp.Map):
                try:
                    await self.gate.call("map", pool=p.name, guest=c.guest, src=c.src)
                    self.core.event(c.guest, "pool-claimed", pool=p.name, src=c.src)
                except WardenError as e:  # claimed in the kernel meanwhile: the poll tells
                    log.warning("pool %s: map %s -> %s: %s", p.name, c.src, c.guest, e)
            elif isinstance(c, pp.Unmap | pp.Release):
                if isinstance(c, pp.Release):
                    self.core.event(c.guest, "pool-released", pool=p.name, src=c.src,
                                    reason=c.reason)  # fmt: skip
                last = policy.guest_of(c.src) is None
                await self.gate.call("unmap", pool=p.name, guest=c.guest, src=c.src, last=last)
            elif isinstance(c, pp.Forget):
                await self.gate.call("forget", pool=p.name, src=c.src)

    async def _bring_up(self, p: Pool, name: str, reason: str) -> None:
        """Start (or recycle: evidence kept, disk dropped) `name`, pristine, then probe it."""
        gen = self.gen
        try:
            guest = self.core.guests.require(name)
            if guest.state is m.State.ABSENT:
                self.core.control.start(name)  # created now: a fresh disk
            elif name in self.ops.recycling:
                # A recycle under way (a previous fleet's pool asked for it) ends in a pristine
                # boot: wait for that boot rather than fail on the recycle's Conflict.
                boot = guest.boot
                async with asyncio.timeout(BOOT_TIMEOUT):
                    while name in self.ops.recycling and guest.boot == boot:
                        await asyncio.sleep(0.1)
            else:
                await self.ops.recycle(name, reason)
            state = await self.core.control.wait_state(
                name, (m.State.RUNNING, m.State.CRASHED, m.State.STOPPED), BOOT_TIMEOUT
            )
            if state is not m.State.RUNNING:
                raise WardenError(f"{name} did not start: {state}")
            if gen != self.gen or self.gate is None:
                self._done(name, gen)
                return  # the pools changed meanwhile: the new policy adopts it
            address = p.addresses[p.guests.index(name)]
            await self.gate.call(
                "probe", guest=name, address=address, port=p.guest_port, timeout=PROBE_TIMEOUT
            )
        except (WardenError, TimeoutError) as e:
            self._done(name, gen)
            self.core.event(name, "pool-failed", pool=p.name, error=str(e) or "timeout")
            if gen == self.gen and p.name in self.policies and self.gate is not None:
                await self._run(p, self.policies[p.name].failed(name, time.monotonic()))

    def _done(self, name: str, gen: int) -> None:
        if self.busy.get(name) == gen:
            del self.busy[name]

    def status(self) -> dict[str, Any]:
        return {
            p.name: {
                g: {
                    "slot": self.policies[p.name].slot(g).value,
                    "src": self.policies[p.name].src_of(g),
                }
                for g in p.guests
            }
            for p in self.pools
            if p.name in self.policies
        }
