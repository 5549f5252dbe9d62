"""The daemon: one per WARDEN_HOME; owns every guest's supervisor and the fleet file.

It is built by the composition root (warden.app.compose) with its Context and its features,
in their order. Start-up order matters for guests that outlived the previous daemon: the
database says which guests were live; each is verified (pid + process start time + cgroup
membership) and its lines, mconsole and exit watch are re-attached before any feature starts
and anything new is started.

Nothing here blocks the event loop for long: a fleet is checked by awaiting every feature's
check (those that must do blocking I/O do it off the loop), and applies are serialised by a
lock, so that an apply never interleaves with another.
"""

import asyncio
import contextlib
import logging
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.seam import Feature
from warden.daemon.supervisor import Supervisor
from warden.errors import Conflict, NotFound, WardenError
from warden.host import ns
from warden.host.zygote import Zygote
from warden.spec import fleet as fleetmod
from warden.tasks import spawn

log = logging.getLogger("warden.daemon")

NOFILE_WANTED = 1 << 16


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
    def __init__(self, ctx: Context, features: Sequence[Feature]):
        self.ctx = ctx
        ctx.control = _Control(self)
        self.layout = ctx.layout
        self.features = tuple(features)
        ctx.features = list(self.features)
        self.sups: dict[str, Supervisor] = ctx.machines
        self.started = time.time()
        self.reattached = 0
        self.fd_limit = 0
        self.started_features: list[Feature] = []  # a refused `up` stops none it did not start
        self._applying = asyncio.Lock()

    @property
    def c(self) -> Context:
        """The context, by the name memory/balancer.py reads it (its view of the daemon, until
        it moves onto the seam: docs/decisions/2026-12-07-structure.md)."""
        return self.ctx

    # ---- life cycle -------------------------------------------------------------------------
    async def open(self, fallback: FleetFile | None = None) -> None:
        """Re-attach the guests that outlived the previous daemon and let the features read
        what they saved. Starts no process and changes nothing outside the daemon.

        A stored fleet that no longer validates (a newer warden refuses what an older one
        took) is not read as an empty fleet: that made every guest a half-done prune, and the
        daemon destroyed their disks. The daemon attaches with `fallback` (the file `warden up`
        was given) instead, and `start` refuses to go on without one."""
        if self.ctx.stored_error is not None and fallback is not None:
            self.ctx.fleet = fleetmod.parse(fallback.text, fallback.source)
            log.warning("%s; attaching with %s instead", self.ctx.stored_error, fallback.source)
        ns.set_child_subreaper()
        self.fd_limit = raise_fd_limit()
        for spec in self.ctx.fleet.machines:
            self._add(spec)
        reattached = 0
        for sup in list(self.sups.values()):
            if sup.machine.state in m.LIVE and await sup.reattach():
                reattached += 1
        for feature in self.features:
            feature.load()  # what the checks below compare against
        self.reattached = reattached

    async def start(self, up: FleetFile | None = None) -> dict[str, Any] | None:
        """Start the features and the guests. `warden daemon` (up=None) restores what each
        guest was last asked to be; `warden up` applies its file and starts every machine of it
        (as `docker compose up` does). A file that would be refused is refused before anything
        starts (a network, the zygote, a guest): the caller then shuts down with nothing to
        undo."""
        if self.ctx.stored_error is not None:
            self._refuse_unnamed(up)
        if up is not None:
            await self.check(up.text, up.source, up.prune, verb="up")
        self.ctx.zygote = Zygote()
        self.ctx.zygote.start()
        self.ctx.event(None, "daemon-started", pid=os.getpid(), reattached=self.reattached)
        for feature in self.features:
            self.started_features.append(feature)  # one that fails half-way is stopped too
            await feature.start()
        await self._finish_prunes()
        if up is not None:
            return await self.apply(up.text, up.source, up.prune, start_all=True)
        self._autostart()
        return None

    def _refuse_unnamed(self, up: FleetFile | None) -> None:
        """With a stored fleet that no longer validates, the guests that have a row are kept
        (disks, logs, running kernels) unless the file `warden up` was given names them or
        is told to replace them."""
        named = {spec.name for spec in self.ctx.fleet.machines}
        unnamed = sorted(r.name for r in self.ctx.store.machines() if r.name not in named)
        if up is None:
            raise Conflict(
                f"{self.ctx.stored_error}. Nothing was changed and the guests keep running; "
                "fix the fleet file and start with it: warden up FILE"
            )
        if unnamed and not up.prune:
            raise Conflict(
                f"{self.ctx.stored_error}; {up.source} does not name {', '.join(unnamed)}, "
                f"which still exist: name them, or let the file replace them: warden up "
                f"--prune {up.source}"
            )

    async def _finish_prunes(self) -> None:
        """A machine with a row that the stored fleet does not name was being pruned when a
        daemon died: `apply --prune` saves the new fleet, kills the machine and destroys it
        once it is down (`_forget`). Finish it as the prune would have: kill what still runs,
        archive its logs, remove its files and its row. Left alone, its files stayed for good
        and a later fleet naming it again started from the stale row. Runs after the features
        started: the console's log service closes the logs no daemon writes any more (END) at
        its start, and every feature's `flush` is awaited before their folder is archived."""
        names = {spec.name for spec in self.ctx.fleet.machines}
        rows = [row for row in self.ctx.store.machines() if row.name not in names]
        if not rows:
            return
        for feature in self.features:
            await feature.flush()
        for row in rows:
            sup = Supervisor(self.ctx, fleetmod.Machine(name=row.name, owner=""))
            sup.restore(row)
            if sup.cgroup.exists() and sup.cgroup.populated():
                sup.cgroup.kill()
            await sup.cgroup.emptied(5.0)
            sup.machine.pid = None
            sup.machine.handle(m.Exited(None, None), time.time())  # no longer live
            sup.destroy()  # files removed, logs archived
            self.ctx.event(row.name, "pruned", note="finished after a daemon died while pruning it")

    def _add(self, spec: fleetmod.Machine) -> Supervisor:
        sup = Supervisor(self.ctx, spec)
        row = self.ctx.store.machine(spec.name)
        if row is not None:
            sup.restore(row)
        self.sups[spec.name] = sup
        return sup

    def _autostart(self, start_all: bool = False) -> None:
        """Start the guests that want to run: those last asked to run, those never started
        whose spec says autostart, and with `start_all` every autostart machine."""
        for sup in list(self.sups.values()):
            if sup.machine.state in m.LIVE:
                continue
            row_wants = sup.machine.desired == "running"
            never_stopped = sup.machine.state is m.State.ABSENT
            if row_wants or (sup.spec.autostart and (never_stopped or start_all)):
                try:
                    self.start_machine(sup.name)
                except WardenError as e:
                    self.ctx.event(sup.name, "autostart-failed", error=str(e))

    async def shutdown(self, stop_guests: bool, timeout: float = 40.0) -> None:
        if stop_guests:
            # Guests first: their exit hooks still have the features (networks) they use.
            await self.stop_all(timeout)
        for feature in reversed(self.started_features):
            try:
                await feature.stop()
            except Exception:
                log.exception("stopping feature %s", feature.name)
        for sup in self.sups.values():
            sup.detach()
        await self.ctx.boots.close()
        # Both wait (the zygote's exit, the event writer's last batch): off the loop, which
        # still serves the API meanwhile.
        loop = asyncio.get_running_loop()
        if self.ctx.zygote is not None:
            await loop.run_in_executor(None, self.ctx.zygote.stop)
        self.ctx.event(None, "daemon-stopped", guests_left_running=not stop_guests)
        await loop.run_in_executor(None, self.ctx.store.close)

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
    async def check(
        self, text: str, source: str, prune: bool = False, verb: str = "apply"
    ) -> tuple[fleetmod.Fleet, list[str]]:
        """Everything that could refuse the fleet file, changing nothing: the new fleet and the
        machines it drops. `verb` is the command the refusal tells the user to rerun."""
        new = fleetmod.parse(text, source)
        gone = self._check_machines(new, prune, verb)
        for feature in self.features:
            # Host-side checks (a port already bound, a tool missing): refuse before any change.
            await feature.check_fleet(new)
        return new, gone

    def _check_machines(self, new: fleetmod.Fleet, prune: bool, verb: str) -> list[str]:
        """The machines `new` drops; Conflict if one still exists and `prune` was not given."""
        old_names = set(self.sups)
        new_names = {mm.name for mm in new.machines}
        gone = sorted(old_names - new_names)
        blocking = [n for n in gone if self.sups[n].machine.state is not m.State.ABSENT]
        if blocking and not prune:
            raise Conflict(
                f"{new.source}: machines {', '.join(blocking)} are not in the fleet file any "
                "more but still exist; destroy them first (warden destroy NAME) or let the file "
                f"replace them: warden {verb} --prune {new.source}"
            )
        for n in new_names - old_names:
            # Validate images up front so a bad path fails the apply, not a later start.
            spec = new.machine(n)
            assert spec is not None
            row = self.ctx.store.machine(n)
            if row is None:
                self.ctx.images.resolve(spec.image)
        return gone

    async def apply(
        self, text: str, source: str, prune: bool = False, start_all: bool = False
    ) -> dict[str, Any]:
        verb = "up" if start_all else "apply"
        async with self._applying:
            new, _ = await self.check(text, source, prune, verb)
            # Again, with no await from here to the last change: a machine created or
            # started while the features checked is judged as it is now.
            gone = self._check_machines(new, prune, verb)
            return self._apply(new, text, gone, start_all)

    def _apply(
        self, new: fleetmod.Fleet, text: str, gone: list[str], start_all: bool
    ) -> dict[str, Any]:
        report: dict[str, Any] = {"added": [], "changed": [], "removed": [], "started": []}
        for n in gone:
            sup = self.sups[n]
            if sup.machine.state in m.LIVE:
                sup.post(m.Kill())
            report["removed"].append(n)
        self.ctx.fleet = new
        self.ctx.store.save_fleet(new.source, text)
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
        self.ctx.event(
            None, "fleet-applied", source=new.source, **{k: ",".join(v) for k, v in report.items()}
        )
        for feature in self.features:
            feature.fleet_changed()
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
        for feature in self.features:
            feature.check_start(sup)
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

    async def mconsole(self, name: str, command: str, user: str, timeout: float = 10.0) -> str:
        """An operator's mconsole command (recorded with who sent it)."""
        sup = self.sup(name)
        reply = await sup.request(command, timeout=timeout)
        self.ctx.event(sup.name, "mconsole", command=command, user=user)
        return reply

    def infos(self) -> list[dict[str, Any]]:
        return [s.info() for s in self.sups.values()]

    def status(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for s in self.sups.values():
            states[str(s.machine.state)] = states.get(str(s.machine.state), 0) + 1
        return {
            "pid": os.getpid(),
            "home": str(self.layout.home),
            "uptime": time.time() - self.started,
            "cgroups": self.ctx.hierarchy.describe(),
            "fleet": self.ctx.fleet.source,
            "machines": len(self.sups),
            "states": states,
            "fd_limit": self.fd_limit,
            "open_fds": len(os.listdir("/proc/self/fd")),
        }


class _Control:
    """seam.Control over the Daemon's machine operations."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def start(self, name: str) -> None:
        self.daemon.start_machine(name)

    async def stop(self, name: str, timeout: float = 30.0, wait: bool = True) -> None:
        await self.daemon.stop_machine(name, timeout=timeout, wait=wait)

    async def kill(self, name: str, wait: bool = True) -> None:
        await self.daemon.kill_machine(name, wait=wait)

    async def apply(self, text: str, source: str) -> dict[str, Any]:
        return await self.daemon.apply(text, source, prune=True)

    def reset(self, name: str) -> None:
        self.daemon.reset_machine(name)

    async def wait_state(self, name: str, states: tuple[m.State, ...], timeout: float) -> m.State:
        return await self.daemon.sup(name).wait_state(states, timeout)

    def pause(self, name: str, reason: str) -> None:
        self.daemon.sup(name).post(m.Pause(reason))

    def resume(self, name: str) -> None:
        self.daemon.resume_machine(name)
