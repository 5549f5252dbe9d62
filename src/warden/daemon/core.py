"""The daemon: one per WARDEN_HOME; owns every guest's supervisor and the fleet file.

Start-up order matters for guests that outlived the previous daemon: the database says which
guests were live; each is verified (pid + process start time + cgroup membership) and its
lines, mconsole and exit watch are re-attached before anything new is started.
"""

import asyncio
import contextlib
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from warden.daemon import machine as m
from warden.daemon.context import BootHook, Context
from warden.daemon.supervisor import Supervisor
from warden.errors import Conflict, NotFound, SpecError, WardenError
from warden.host import cgroup, ns
from warden.host.zygote import Zygote
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.spec import fleet as fleetmod
from warden.store import Store
from warden.tasks import spawn

log = logging.getLogger("warden.daemon")

NOFILE_WANTED = 1 << 16
EMPTY_FLEET = fleetmod.Fleet(source="<none>")


@dataclass(frozen=True)
class FleetFile:
    """The fleet file `warden up` runs."""

    text: str
    source: str
    prune: bool = False


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE toward 65536 (hundreds of guests x a handful of fds each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(NOFILE_WANTED, hard)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Daemon:
    def __init__(self, layout: Layout, hooks: list[BootHook] | None = None):
        self.layout = layout
        self.extra_hooks = hooks or []
        self.sups: dict[str, Supervisor] = {}
        self.started = time.time()
        self.ctx: Context | None = None
        self.reattached = 0
        self.fd_limit = 0
        self.stored_error: str | None = None  # why the stored fleet was not read, if it was not
        self.services: list[Any] = []  # started/stopped with the daemon (concentrator, ...)
        self.started_services: list[Any] = []  # a refused `up` stops none it did not start
        # API routes added by features: (method, path under /v1, aiohttp handler)
        self.routes: list[tuple[str, str, Any]] = []
        # Called with the Supervisor before a start changes anything; raise WardenError to
        # refuse it (memory admission). Restarts by the restart policy meet BootHooks only.
        self.start_checks: list[Any] = []

    def add_route(self, method: str, path: str, handler: Any) -> None:
        """For features' install(): expose `handler` at /v1/`path` on the daemon's API."""
        self.routes.append((method, path, handler))

    @property
    def c(self) -> Context:
        assert self.ctx is not None, "daemon not started"
        return self.ctx

    # ---- life cycle -------------------------------------------------------------------------
    def open(self, fallback: FleetFile | None = None) -> None:
        """Read the state, hook in the features and re-attach the guests that outlived the
        previous daemon. Starts no process and changes nothing outside the daemon.

        A stored fleet that no longer validates (a newer warden refuses what an older one
        took) is not read as an empty fleet: that made every guest a half-done prune, and the
        daemon destroyed their disks. The daemon attaches with `fallback` (the file `warden up`
        was given) instead, and `start` refuses to go on without one."""
        self.layout.ensure()
        ns.set_child_subreaper()
        self.fd_limit = raise_fd_limit()
        hierarchy = cgroup.detect()
        store = Store(self.layout.db)
        saved = store.load_fleet()
        fleet = EMPTY_FLEET
        if saved is not None:
            try:
                fleet = fleetmod.parse(saved[1], saved[0])
            except SpecError as e:
                self.stored_error = f"the stored fleet (from {saved[0]}) no longer validates: {e}"
                if fallback is not None:
                    fleet = fleetmod.parse(fallback.text, fallback.source)
                    log.warning("%s; attaching with %s instead", self.stored_error, fallback.source)
                else:
                    log.error("%s", self.stored_error)
        self.ctx = Context(
            layout=self.layout,
            store=store,
            hierarchy=hierarchy,
            images=ImageStore(self.layout),
            fleet=fleet,
            hooks=list(self.extra_hooks),
        )
        self._install_features()
        for spec in fleet.machines:
            self._add(spec)
        reattached = 0
        for sup in self.sups.values():
            if sup.machine.state in m.LIVE and sup.reattach():
                reattached += 1
        for svc in self.services:
            if hasattr(svc, "load"):
                svc.load()  # what the checks below compare against
        self.reattached = reattached

    async def start(self, up: FleetFile | None = None) -> dict[str, Any] | None:
        """Start the services and the guests. `warden daemon` (up=None) restores what each
        guest was last asked to be; `warden up` applies its file and starts every machine of it
        (as `docker compose up` does). A file that would be refused is refused before anything
        starts (a network, the zygote, a guest): the caller then shuts down with nothing to
        undo."""
        if self.ctx is None:
            self.open(fallback=up)
        if self.stored_error is not None:
            self._refuse_unnamed(up)
        if up is not None:
            self.check(up.text, up.source, up.prune, verb="up")
        self.c.zygote = Zygote()
        self.c.zygote.start()
        self.c.event(None, "daemon-started", pid=os.getpid(), reattached=self.reattached)
        for svc in self.services:
            self.started_services.append(svc)  # one that fails half-way is stopped too
            await svc.start()
        await self._finish_prunes()
        if up is not None:
            return self.apply(up.text, up.source, up.prune, start_all=True)
        self._autostart()
        return None

    def _refuse_unnamed(self, up: FleetFile | None) -> None:
        """With a stored fleet that no longer validates, the guests that have a row are kept
        (disks, logs, running kernels) unless the file `warden up` was given names them or
        is told to replace them."""
        named = {spec.name for spec in self.c.fleet.machines}
        unnamed = sorted(r.name for r in self.c.store.machines() if r.name not in named)
        if up is None:
            raise Conflict(
                f"{self.stored_error}. Nothing was changed and the guests keep running; fix "
                "the fleet file and start with it: warden up FILE"
            )
        if unnamed and not up.prune:
            raise Conflict(
                f"{self.stored_error}; {up.source} does not name {', '.join(unnamed)}, which "
                f"still exist: name them, or let the file replace them: warden up --prune "
                f"{up.source}"
            )

    def _install_features(self) -> None:
        """Hook in the features built as separate modules (session logs, jails, network...)."""
        for name in (
            "warden.console.feature",
            "warden.disk.feature",
            "warden.host.jail_feature",
            "warden.net.feature",
            "warden.memory.feature",
            "warden.honeypot.feature",
            "warden.forensics.feature",  # it taps the session logs the others set up
            "warden.web.glue",  # last: a front end over the others' services
        ):
            try:
                module = __import__(name, fromlist=["install"])
            except ModuleNotFoundError as e:
                if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                    continue  # that feature is not part of this build
                raise
            module.install(self)

    async def _finish_prunes(self) -> None:
        """A machine with a row that the stored fleet does not name was being pruned when a
        daemon died: `apply --prune` saves the new fleet, kills the machine and destroys it
        once it is down (`_forget`). Finish it as the prune would have: kill what still runs,
        archive its logs, remove its files and its row. Left alone, its files stayed for good
        and a later fleet naming it again started from the stale row. Runs after the services
        started: the log service closes the logs no daemon writes any more (END) at its start,
        and that is waited for before their folder is archived."""
        names = {spec.name for spec in self.c.fleet.machines}
        rows = [row for row in self.c.store.machines() if row.name not in names]
        if not rows:
            return
        loop = asyncio.get_running_loop()
        for svc in self.services:
            writer = getattr(svc, "writer", None)  # the session-log writer thread
            if writer is not None and hasattr(writer, "flush"):
                await loop.run_in_executor(None, writer.flush, 30.0)
        for row in rows:
            sup = Supervisor(self.c, fleetmod.Machine(name=row.name, owner=""))
            sup.restore(row)
            if sup.cgroup.exists() and sup.cgroup.populated():
                sup.cgroup.kill()
            await loop.run_in_executor(None, sup.cgroup.wait_empty, 5.0)
            sup.machine.pid = None
            sup.machine.handle(m.Exited(None, None), time.time())  # no longer live
            sup.destroy()
            self.c.event(row.name, "pruned", note="finished after a daemon died while pruning it")

    def _add(self, spec: fleetmod.Machine) -> Supervisor:
        sup = Supervisor(self.c, spec)
        row = self.c.store.machine(spec.name)
        if row is not None:
            sup.restore(row)
        self.sups[spec.name] = sup
        return sup

    def _autostart(self, start_all: bool = False) -> None:
        """Start the guests that want to run: those last asked to run, those never started
        whose spec says autostart, and with `start_all` every autostart machine."""
        for sup in self.sups.values():
            if sup.machine.state in m.LIVE:
                continue
            row_wants = sup.machine.desired == "running"
            never_stopped = sup.machine.state is m.State.ABSENT
            if row_wants or (sup.spec.autostart and (never_stopped or start_all)):
                try:
                    self.start_machine(sup.name)
                except WardenError as e:
                    self.c.event(sup.name, "autostart-failed", error=str(e))

    async def shutdown(self, stop_guests: bool, timeout: float = 40.0) -> None:
        if stop_guests:
            # Guests first: their exit hooks still have the services (networks) they use.
            await self.stop_all(timeout)
        for svc in reversed(self.started_services):
            with contextlib.suppress(Exception):
                await svc.stop()
        for sup in self.sups.values():
            sup.detach()
        if self.ctx is not None and self.c.zygote is not None:
            self.c.zygote.stop()
        if self.ctx is not None:
            self.c.event(None, "daemon-stopped", guests_left_running=not stop_guests)
            self.c.store.close()

    async def stop_all(self, timeout: float = 40.0) -> None:
        live = [s for s in self.sups.values() if s.machine.state in m.LIVE]
        for sup in live:
            with contextlib.suppress(WardenError):
                if sup.machine.state is m.State.STOPPING:
                    continue
                sup.post(m.Stop(cad_timeout=timeout * 0.6, halt_timeout=timeout * 0.25))
        await asyncio.gather(
            *(self._wait_down(s, timeout + 10) for s in live), return_exceptions=True
        )

    async def _wait_down(self, sup: Supervisor, timeout: float) -> None:
        await sup.wait_state((m.State.STOPPED, m.State.CRASHED, m.State.ABSENT), timeout)

    # ---- fleet ------------------------------------------------------------------------------
    def check(
        self, text: str, source: str, prune: bool = False, verb: str = "apply"
    ) -> tuple[fleetmod.Fleet, list[str]]:
        """Everything that could refuse the fleet file, changing nothing: the new fleet and the
        machines it drops. `verb` is the command the refusal tells the user to rerun."""
        new = fleetmod.parse(text, source)
        old_names = set(self.sups)
        new_names = {mm.name for mm in new.machines}
        gone = sorted(old_names - new_names)
        blocking = [n for n in gone if self.sups[n].machine.state is not m.State.ABSENT]
        if blocking and not prune:
            raise Conflict(
                f"{source}: machines {', '.join(blocking)} are not in the fleet file any more but "
                "still exist; destroy them first (warden destroy NAME) or let the file replace "
                f"them: warden {verb} --prune {source}"
            )
        for n in new_names - old_names:
            # Validate images up front so a bad path fails the apply, not a later start.
            spec = new.machine(n)
            assert spec is not None
            row = self.c.store.machine(n)
            if row is None:
                self.c.images.resolve(spec.image)
        for svc in self.services:
            # Host-side checks (a port already bound, a tool missing): refuse before any change.
            if hasattr(svc, "check_fleet"):
                svc.check_fleet(new)
        return new, gone

    def apply(
        self, text: str, source: str, prune: bool = False, start_all: bool = False
    ) -> dict[str, Any]:
        new, gone = self.check(text, source, prune, verb="up" if start_all else "apply")
        report: dict[str, Any] = {"added": [], "changed": [], "removed": [], "started": []}
        for n in gone:
            sup = self.sups[n]
            if sup.machine.state in m.LIVE:
                sup.post(m.Kill())
            report["removed"].append(n)
        self.c.fleet = new
        self.c.store.save_fleet(source, text)
        for spec in new.machines:
            if spec.name in self.sups:
                if self.sups[spec.name].spec != spec:
                    self.sups[spec.name].update_spec(spec)
                    report["changed"].append(spec.name)
            else:
                self._add(spec)
                report["added"].append(spec.name)
        if gone:
            spawn(self._forget(gone), "prune")
        self.c.event(
            None, "fleet-applied", source=source, **{k: ",".join(v) for k, v in report.items()}
        )
        for svc in self.services:
            if hasattr(svc, "fleet_changed"):
                svc.fleet_changed()
        before = {n for n, s in self.sups.items() if s.machine.state in m.LIVE}
        self._autostart(start_all)
        report["started"] = sorted(
            n for n, s in self.sups.items() if s.machine.state in m.LIVE and n not in before
        )
        return report

    async def _forget(self, names: list[str]) -> None:
        for n in names:
            sup = self.sups[n]
            with contextlib.suppress(TimeoutError):
                await self._wait_down(sup, 15)
            with contextlib.suppress(WardenError):
                sup.destroy()
            del self.sups[n]

    # ---- machine operations ------------------------------------------------------------------
    def sup(self, name: str) -> Supervisor:
        sup = self.sups.get(name)
        if sup is None:
            raise NotFound(f"no machine named {name!r} (warden ls lists them)")
        return sup

    def start_machine(self, name: str) -> None:
        sup = self.sup(name)
        for check in self.start_checks:
            check(sup)
        if sup.machine.state is m.State.ABSENT:
            sup.create()
        sup.post(m.Start())

    async def start_and_wait(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        sup = self.sup(name)
        self.start_machine(name)
        state = await sup.wait_state((m.State.RUNNING, m.State.CRASHED, m.State.STOPPED), timeout)
        if state is not m.State.RUNNING:
            raise WardenError(f"{name} did not start: {sup.machine.last_exit}")
        return sup.info()

    async def stop_machine(self, name: str, timeout: float = 30.0, wait: bool = True) -> None:
        sup = self.sup(name)
        sup.post(m.Stop(cad_timeout=timeout, halt_timeout=10.0))
        if wait:
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), timeout + 30)

    async def kill_machine(self, name: str, wait: bool = True) -> None:
        sup = self.sup(name)
        sup.post(m.Kill())
        if wait:
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 30)

    def create_machine(self, name: str) -> None:
        sup = self.sup(name)
        if sup.machine.state is not m.State.ABSENT:
            raise Conflict(f"{name} already exists ({sup.machine.state})")
        sup.create()

    def reset_machine(self, name: str) -> None:
        self.sup(name).reset()

    def destroy_machine(self, name: str) -> None:
        self.sup(name).destroy()

    def pause_machine(self, name: str) -> None:
        self.sup(name).post(m.Pause())

    def resume_machine(self, name: str) -> None:
        self.sup(name).post(m.Resume())

    def status(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for s in self.sups.values():
            states[str(s.machine.state)] = states.get(str(s.machine.state), 0) + 1
        return {
            "pid": os.getpid(),
            "home": str(self.layout.home),
            "uptime": time.time() - self.started,
            "cgroups": self.c.hierarchy.describe(),
            "fleet": self.c.fleet.source,
            "machines": len(self.sups),
            "states": states,
            "fd_limit": self.fd_limit,
            "open_fds": len(os.listdir("/proc/self/fd")),
        }
