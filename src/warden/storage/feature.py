"""The storage watch: pauses the guests whose disks grow when WARDEN_HOME runs low, and resumes
them when space comes back (the decisions are warden.storage.policy's; this is the driver).

start/stop     the watch loop: statvfs of the home and st_blocks of each live guest's COW,
               every 0.25 s while space is low, up to every 2 s while there is plenty,
               sooner near the floor (policy.WORST_RATE: a writer not yet seen)
check_fleet    the [host] floor must leave room to write and stay above the logs' floor
fleet_changed  the floor again

A guest it pauses is `paused` with pause_reason "storage" (`warden ls` shows it), and the
events `storage-paused` / `storage-resumed` say the free bytes. An admin's `warden resume` of
such a guest is honoured: if its disk grows while space is still below the floor, the next
reading pauses it again. An admin's `warden pause` of a held guest makes it the admin's: space
coming back does not resume it. The names held are saved in the home, so that a daemon started
after this one resumes them (a reattached guest's pause reason is not in its row).
"""

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from warden import statefile
from warden.daemon import machine as m
from warden.daemon.seam import Core, Feature
from warden.errors import SpecError, WardenError
from warden.sessionlog import quota
from warden.spec.fleet import Fleet
from warden.storage.policy import Decision, FloorSetting, Reading, Watch
from warden.tasks import spawn

log = logging.getLogger("warden.storage")
REASON = "storage"


def setting(fleet: Fleet) -> FloorSetting:
    return FloorSetting(fleet.host.home_floor, fleet.host.home_floor_percent)


def allocated(path: Path) -> int | None:
    """Bytes the filesystem gave `path` (a COW file is sparse: its size says nothing)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return None


class StorageFeature(Feature):
    name = "storage"

    def __init__(self, core: Core):
        self.core = core
        self.watch = Watch()
        self.held_file = core.layout.home / "storage-held.json"
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.last: Decision | None = None
        self.free = 0
        self.statvfs = os.statvfs  # the driver test scripts the filesystem's free space

    def load(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            names = json.loads(self.held_file.read_text())
            self._held = {n for n in names if isinstance(n, str)}

    async def check_fleet(self, fleet: Fleet) -> None:
        loop = asyncio.get_running_loop()
        st = await loop.run_in_executor(None, self.statvfs, self.core.layout.home)
        size = st.f_blocks * st.f_frsize
        why = setting(fleet).problem(size, quota.disk_floor(size, quota.Tier.OUTPUT))
        if why:
            raise SpecError(f"{fleet.source}: [host] home_floor: {why}")

    def fleet_changed(self) -> None:
        self.watch.setting = setting(self.core.fleet)

    async def start(self) -> None:
        self.watch.setting = setting(self.core.fleet)
        for guest in self.core.guests:
            # Guests this watch paused before the daemon restarted are its own again.
            if guest.name in self._held and guest.state is m.State.PAUSED:
                if not guest.pause_reason:
                    self.core.control.pause(guest.name, REASON)
        self._task = spawn(self._run(), "storage-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reading = await loop.run_in_executor(None, self._read, *self._live())
                decision = self.watch.step(reading)
                held = self._act(reading, decision)
                if held != self._held:
                    self._held = held
                    await loop.run_in_executor(None, self._save, sorted(held))
                wait = decision.wait
            except Exception:
                log.exception("storage watch")  # a bad reading must not end the watch
                wait = 2.0
            await asyncio.sleep(wait)

    def _live(self) -> tuple[dict[str, Path], frozenset[str]]:
        """On the loop: the COW of each running guest and of each guest held, and the held."""
        cows: dict[str, Path] = {}
        held: set[str] = set()
        for g in self.core.guests:
            if g.state is m.State.PAUSED and g.pause_reason == REASON:
                held.add(g.name)
            elif g.state is not m.State.RUNNING:
                continue
            cows[g.name] = g.files.cow
        return cows, frozenset(held)

    def _read(self, cows: dict[str, Path], held: frozenset[str]) -> Reading:
        """Off the loop: a statvfs and one stat per guest."""
        st = self.statvfs(self.core.layout.home)
        sizes = {n: b for n, p in cows.items() if (b := allocated(p)) is not None}
        # f_bavail, not f_bfree: a jailed guest's kernel runs as an unprivileged uid.
        return Reading(
            time.monotonic(),
            st.f_bavail * st.f_frsize,
            st.f_blocks * st.f_frsize,
            sizes,
            held,
        )

    def _act(self, r: Reading, d: Decision) -> set[str]:
        """Pause and resume as decided; the names held after."""
        self.last, self.free = d, r.free
        for name in d.pause:
            guest = self.core.guests.get(name)
            if guest is None or guest.state is not m.State.RUNNING:
                continue
            try:
                self.core.control.pause(name, REASON)
            except WardenError as e:
                log.warning("storage: could not pause %s: %s", name, e)
                continue
            rate = round(d.rates.get(name, 0))
            self.core.event(name, "storage-paused", free=r.free, floor=d.floor, rate=rate)
            log.warning(
                "storage: paused %s (its disk grows %d B/s; WARDEN_HOME has %d B free, floor %d B)",
                name,
                rate,
                r.free,
                d.floor,
            )
        for name in d.resume:
            guest = self.core.guests.get(name)
            if guest is None or guest.state is not m.State.PAUSED or guest.pause_reason != REASON:
                continue
            try:
                self.core.control.resume(name)
            except WardenError as e:
                log.warning("storage: could not resume %s: %s", name, e)
                continue
            self.core.event(name, "storage-resumed", free=r.free, floor=d.floor)
            log.warning("storage: resumed %s (WARDEN_HOME has %d B free)", name, r.free)
        return {g.name for g in self.core.guests if g.pause_reason == REASON}

    def _save(self, held: list[str]) -> None:
        try:
            statefile.write_json(self.held_file, held)
        except OSError as e:  # a full home: the next change tries again
            log.warning("storage: cannot save %s: %s", self.held_file, e)

    def status(self) -> dict[str, Any]:
        d = self.last
        return {
            "free": self.free,
            "floor": d.floor if d else None,
            "resume_at": d.resume_at if d else None,
            "held": sorted(self._held),
        }
