"""The jail as a feature of the daemon (issue 4): every guest gets a cgroup with limits, and,
unless its fleet entry says `jail = false`, an empty jail (warden.host.jail) under a uid of its
own.

- before_boot: the cgroup limits, the previous boot's umid directory removed, the COW header
  pointed at the recorded base, and for a jailed guest the jail's plan (warden.jail.plan);
- on_up: the jail is emptied (warden.jail.emptier); at start, so are the jails of guests a
  restarted daemon re-attached to (no "up" comes for them);
- check_fleet: image paths a jail would not take are refused before anything is applied;
- for the API: `audit` (`warden jail audit`, warden.jail.audit).

It comes first in the composition root: the guest's uid, which it gives in before_boot, is
read by the features after it (the honeypot's disguise server).
"""

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Core, Feature, Guest
from warden.disk.diff import display
from warden.jail import audit, plan
from warden.jail.emptier import Emptier
from warden.jail.limits import JailError, check_image_link, limits_for
from warden.spec.fleet import Fleet
from warden.tasks import spawn


class JailFeature(Feature):
    name = "jail"

    def __init__(self, core: Core):
        self.core = core
        self.emptiers: dict[str, asyncio.Task[None]] = {}
        self.status: dict[str, dict[str, Any]] = {}  # per guest: the jail's state this boot
        self.keep_at_up: dict[str, list[str]] = {}  # per guest: this boot's plan.kept_at_up()

    async def check_fleet(self, fleet: Fleet) -> None:
        """Refuse, before anything is applied, image paths a jail would not take."""
        problems = []
        for spec in fleet.machines:
            if spec.jail and ("/" in spec.image or spec.image.endswith(".img")):
                try:
                    check_image_link(Path(spec.image).absolute(), f"machine {spec.name!r}: image")
                except JailError as e:
                    problems.append(f"{fleet.source}: {e}")
        if problems:
            raise JailError("\n".join(problems))

    async def start(self) -> None:
        for guest in self.core.guests:
            if guest.spec.jail and guest.state in (m.State.RUNNING, m.State.PAUSED):
                self.status[guest.name] = {"jailed": True, "state": "reattached"}
                self.start_emptier(guest)

    async def stop(self) -> None:
        for task in list(self.emptiers.values()):
            task.cancel()
        for task in list(self.emptiers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.emptiers.clear()

    # ---- boots
    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        spec = guest.spec
        limits = limits_for(spec.memory)
        missing = guest.cgroup.set_limits(limits)
        if missing:
            self.core.event(guest.name, "cgroup-limits-missing", controllers=",".join(missing))
        # UML refuses a umid directory whose pid file names a live process; as pid 1 of its
        # namespace it always finds "1" alive (itself), so the previous boot's directory must go.
        shutil.rmtree(guest.files.ctl / guest.name, ignore_errors=True)
        self.status[guest.name] = {"jailed": spec.jail, "state": "booting" if spec.jail else "off"}
        loop = asyncio.get_running_loop()
        repaired: list[plan.Repaired] = []
        try:
            if not spec.jail:
                await loop.run_in_executor(None, plan.unjailed, guest, repaired)
                return
            jp = await loop.run_in_executor(
                None, plan.prepare, guest, self.core, extras, limits, repaired
            )
            extras.jail = jp.to_dict()
            self.keep_at_up[guest.name] = jp.kept_at_up()
        finally:
            for old, new in repaired:  # an event is for the loop's thread
                self.core.event(guest.name, "cow-header-repaired", named=display(old), now=new)

    async def on_up(self, guest: Guest) -> None:
        if guest.spec.jail and self.status.get(guest.name, {}).get("state") == "booting":
            self.start_emptier(guest)

    async def after_exit(self, guest: Guest) -> None:
        task = self.emptiers.pop(guest.name, None)
        if task is not None:
            task.cancel()
        if guest.name in self.status:
            self.status[guest.name]["state"] = "gone"

    def start_emptier(self, guest: Guest) -> None:
        old = self.emptiers.pop(guest.name, None)
        if old is not None:
            old.cancel()
        name = guest.name

        def status(**kv: Any) -> None:
            self.status.setdefault(name, {}).update(kv)

        def event(kind: str, **kv: Any) -> None:
            self.core.event(name, kind, **kv)

        emptier = Emptier(guest, status, event, self.keep_at_up.pop(name, None))
        self.emptiers[name] = spawn(emptier.run(), f"jail-empty:{name}")

    # ---- the API
    async def audit(self, name: str) -> dict[str, Any]:
        """`warden jail audit NAME`, read from /proc off the loop."""
        guest = self.core.guests.require(name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            audit.audit,
            guest,
            self.core.layout,
            self.core.hierarchy,
            self.status.get(guest.name, {}),
        )
