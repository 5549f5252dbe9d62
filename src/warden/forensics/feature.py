"""Timeline, evidence and recycle as a feature of the daemon (warden.forensics.operations).

For the API (api/features.py):
    GET  pools                                     each pool's guests: slot, address
    GET  machines/{name}/timeline?boot=B&since=SNAP&sync=1   {"meta": ..., "entries": [...]}
    POST machines/{name}/evidence  {"out": PATH?, "sync": bool}   -> where, what, the pause
    POST machines/{name}/recycle   {"sync": bool, "wait_evidence": bool}

The recycle policy (fleet key `recycle`) is driven here: the session logs are tapped where
the daemon writes them (the LogFactory seam: the composition root wraps the console's log
factory with `tap`, so every line's log and the tty log pass through `_Tap`, which forwards
everything and tells the machine's RecycleWatch what happened), and once a second each watched
guest's watch is asked whether it is due.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from warden.daemon import machine as m
from warden.daemon.lines import LineLog
from warden.daemon.seam import Core, Feature, LogFactory
from warden.errors import WardenError
from warden.forensics.operations import Operations
from warden.forensics.pooldriver import PoolDriver
from warden.forensics.recycle import RecycleWatch
from warden.sessionlog import codec as sl
from warden.sessionlog import ttylog
from warden.sessionlog.ttyview import TtyView
from warden.tasks import cancel, spawn

log = logging.getLogger("warden.forensics")
TICK = 1.0


class _Tap:
    """A line's log, passed through; what matters to the recycle policy is told to `watch`."""

    def __init__(self, inner: LineLog, driver: "RecycleDriver", machine: str, boot: int):
        self.inner, self.driver, self.machine, self.boot = inner, driver, machine, boot

    def output(self, data: bytes) -> None:
        self.inner.output(data)

    def input(self, data: bytes, user: str) -> None:
        self.inner.input(data, user)
        if (w := self.driver.watch(self.machine, self.boot)) is not None:
            w.activity(time.monotonic())

    def event(self, kind: str, **fields: object) -> None:
        self.inner.event(kind, **fields)
        w = self.driver.watch(self.machine, self.boot)
        if w is not None and kind == "attach":
            w.attached(time.monotonic())
        elif w is not None and kind == "detach":
            w.detached(time.monotonic())

    def close(self) -> None:
        self.inner.close()

    def record(self, rtype: int, payload: bytes, time_us: int | None = None) -> None:
        record = getattr(self.inner, "record", None)
        if record is not None:
            record(rtype, payload, time_us)
        if rtype == sl.TTYLOG:
            self.driver.tty(self.machine, self.boot, payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecycleDriver:
    """The fleet's `recycle` policies: one RecycleWatch per guest and boot, a tick a second."""

    def __init__(self, core: Core, ops: Operations):
        self.core = core
        self.ops = ops
        self.watches: dict[str, RecycleWatch] = {}
        self.views: dict[str, TtyView] = {}
        self._task: asyncio.Task[None] | None = None

    def factory(self, inner: LogFactory) -> LogFactory:
        def make(machine: str, line: str, boot: int, reattach: bool) -> LineLog:
            self._boot(machine, boot)
            return _Tap(inner(machine, line, boot, reattach), self, machine, boot)

        return make

    def _policy(self, machine: str) -> Any:
        spec = self.core.fleet.machine(machine)
        return spec.recycle_policy if spec is not None else None

    def _boot(self, machine: str, boot: int) -> None:
        policy = self._policy(machine)
        w = self.watches.get(machine)
        if policy is None:
            self.watches.pop(machine, None)
        elif w is None or w.boot != boot or w.policy != policy:
            if w is None or w.boot != boot:
                self.views[machine] = TtyView()
            self.watches[machine] = RecycleWatch(policy, boot, time.monotonic())

    def watch(self, machine: str, boot: int) -> RecycleWatch | None:
        w = self.watches.get(machine)
        return w if w is not None and w.boot == boot else None

    def tty(self, machine: str, boot: int, payload: bytes) -> None:
        w = self.watch(machine, boot)
        view = self.views.get(machine)
        if w is None or view is None:
            return
        try:
            rec = view.decode(payload)
        except ttylog.TtyLogError:
            return
        now = time.monotonic()
        if isinstance(rec, ttylog.Exec) and rec.tty:
            session = view.session(rec.tty)
            w.activity(now)
            op = view.ttys.get(session)
            if op is not None and op.is_pty_master and rec.argv and rec.argv[0].startswith(b"-"):
                w.login(session, now)
        elif isinstance(rec, ttylog.Close):
            w.closed(rec.tty, now)
        elif isinstance(rec, ttylog.Data) and view.typed(rec) is not None:
            w.activity(now)

    # ---- the service's life cycle ----------------------------------------------------------
    async def start(self) -> None:
        self._task = spawn(self._loop(), "recycle policy")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def fleet_changed(self) -> None:
        for name in list(self.watches):
            guest = self.core.guests.get(name)
            if guest is None:
                self.watches.pop(name, None)
            else:
                self._boot(name, guest.boot)
        for guest in self.core.guests:
            if guest.name not in self.watches and guest.state in m.LIVE:
                self._boot(guest.name, guest.boot)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for name, w in list(self.watches.items()):
                sup = self.core.guests.get(name)
                if sup is None or sup.state is not m.State.RUNNING or sup.boot != w.boot:
                    continue
                if name in self.ops.recycling:
                    continue
                reason = w.due(now)
                if reason is not None:
                    spawn(self._recycle(name, reason), f"recycle:{name}")

    async def _recycle(self, name: str, reason: str) -> None:
        try:
            await self.ops.recycle(name, reason)
        except WardenError as e:
            self.core.event(name, "recycle-failed", reason=reason, error=str(e))


class ForensicsFeature(Feature):
    """The recycle policy's driver, and what the API serves (timeline, evidence, recycle)."""

    name = "forensics"

    def __init__(self, core: Core):
        self.ops = Operations(core)
        self.driver = RecycleDriver(core, self.ops)
        self.pools = PoolDriver(core, self.ops)  # the fleet's [[pool]]s

    def tap(self, inner: LogFactory) -> LogFactory:
        """`inner` (the console's session logs), seen by the recycle policy on the way."""
        return self.driver.factory(inner)

    async def start(self) -> None:
        await self.driver.start()
        await self.pools.start()

    async def stop(self) -> None:
        await self.pools.stop()
        await self.driver.stop()

    def fleet_changed(self) -> None:
        self.driver.fleet_changed()
        self.pools.fleet_changed()

    async def timeline(
        self, name: str, boot: int | None, since: str | None, sync: bool
    ) -> dict[str, Any]:
        tl = await self.ops.timeline(name, boot, since, sync)
        return {"meta": tl.meta(), "entries": tl.as_json()}

    async def evidence(self, name: str, out: Path | None, sync: bool) -> dict[str, Any]:
        return await self.ops.evidence(name, out, sync)

    async def recycle(self, name: str, sync: bool, wait_evidence: bool) -> dict[str, Any]:
        return await self.ops.recycle(name, "requested", sync=sync, wait_evidence=wait_evidence)
