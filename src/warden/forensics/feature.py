"""Timeline, evidence and recycle, plugged into the daemon (Daemon._install_features).

Routes (under /v1):
    GET  machines/{name}/timeline?boot=B&since=SNAP&sync=1   {"meta": ..., "entries": [...]}
    POST machines/{name}/evidence  {"out": PATH?, "sync": bool}   -> where, what, the pause
    POST machines/{name}/recycle   {"sync": bool, "wait_evidence": bool}

The recycle policy (fleet key `recycle`) is driven here: the session logs are tapped where
the daemon writes them (the LogFactory seam: every line's log and the tty log pass through
`_Tap`, which forwards everything and tells the machine's RecycleWatch what happened), and
once a second each watched guest's watch is asked whether it is due.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from warden.console import sessionlog as sl
from warden.daemon import machine as m
from warden.daemon.context import LogFactory
from warden.daemon.lines import LineLog
from warden.errors import WardenError
from warden.forensics.operations import Operations
from warden.forensics.recycle import RecycleWatch
from warden.honeypot import ttylog
from warden.honeypot.ttyview import TtyView
from warden.tasks import cancel, spawn

if TYPE_CHECKING:
    from warden.daemon.core import Daemon

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

    def __init__(self, daemon: "Daemon", ops: Operations):
        self.daemon = daemon
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
        spec = self.daemon.c.fleet.machine(machine)
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
            sup = self.daemon.sups.get(name)
            if sup is None:
                self.watches.pop(name, None)
            else:
                self._boot(name, sup.boot)
        for name, sup in self.daemon.sups.items():
            if name not in self.watches and sup.machine.state in m.LIVE:
                self._boot(name, sup.boot)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for name, w in list(self.watches.items()):
                sup = self.daemon.sups.get(name)
                if sup is None or sup.machine.state is not m.State.RUNNING or sup.boot != w.boot:
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
            self.daemon.c.event(name, "recycle-failed", reason=reason, error=str(e))


def _flag(value: str | None) -> bool:
    return value not in (None, "", "0", "false", "no")


def install(daemon: "Daemon") -> None:
    ops = Operations(daemon)
    driver = RecycleDriver(daemon, ops)
    daemon.c.logs = driver.factory(daemon.c.logs)
    daemon.services.append(driver)

    async def timeline(request: web.Request) -> web.Response:
        q = request.query
        boot = None
        if q.get("boot"):
            try:
                boot = int(q["boot"])
            except ValueError:
                raise WardenError(f"boot={q['boot']!r}: expected a boot number") from None
        tl = await ops.timeline(
            request.match_info["name"], boot, q.get("since"), _flag(q.get("sync"))
        )
        return web.json_response({"meta": tl.meta(), "entries": tl.as_json()})

    async def evidence(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        out = body.get("out")
        if out is not None and not Path(out).is_absolute():
            raise WardenError(f"out={out!r}: give an absolute path")
        result = await ops.evidence(
            request.match_info["name"], Path(out) if out else None, bool(body.get("sync"))
        )
        return web.json_response(result)

    async def recycle(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        result = await ops.recycle(
            request.match_info["name"],
            "requested",
            sync=bool(body.get("sync", True)),
            wait_evidence=bool(body.get("wait_evidence", False)),
        )
        return web.json_response(result)

    daemon.add_route("GET", "machines/{name}/timeline", timeline)
    daemon.add_route("POST", "machines/{name}/evidence", evidence)
    daemon.add_route("POST", "machines/{name}/recycle", recycle)
