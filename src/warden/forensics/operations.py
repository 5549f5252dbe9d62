"""What the daemon does for `warden timeline`, `warden evidence` and `warden recycle`.

The daemon owns the guests' mconsoles, so it is the one that can copy a running guest's disk:
the COW file is copied while the guest is stopped (warden.disk.snapshot.take: mconsole
`stop`, copy header, bitmap and written data, `go`) and everything else is read from the copy
with the guest running again. The pause is measured and reported (and kept in the evidence).

Recycle (`recycle()`), the order chosen for the shortest time to a pristine console:
1. optionally flush the guest's dirty pages to its disk (`sysrq s` over the mconsole, then
   watch Dirty + Writeback in its /proc/meminfo fall: the host cannot see a guest's page
   cache, and what is still in it would be missing from the evidence);
2. kill the guest (cgroup.kill: every process at once; the intruder's connections drop);
3. move its COW file aside (a rename: no copy) and give it a fresh one over its image;
4. start it: it boots pristine;
5. only then pack the old boot's evidence from the moved file and its closed logs, in the
   background (the new boot does not wait for it), and remove the moved file.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from warden.console import logstore
from warden.daemon import machine as m
from warden.disk import diff as diffmod
from warden.disk import snapshot
from warden.disk.backing import Recorded
from warden.disk.feature import recorded
from warden.errors import Conflict, WardenError
from warden.forensics import collect, render, signing, sources
from warden.forensics import evidence as archive
from warden.tasks import spawn

if TYPE_CHECKING:
    from warden.daemon.core import Daemon
    from warden.daemon.supervisor import Supervisor

T = TypeVar("T")
SYNC_TIMEOUT = 3.0
SYNC_QUIET = 0.1  # the COW file unchanged this long after the sync's writes: it is done
CLOSE_TIMEOUT = 10.0  # for the old boot's logs to be closed and compressed
_MEMINFO = re.compile(r"^(Dirty|Writeback):\s+(\d+) kB$", re.MULTILINE)


def _file_state(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_blocks)


BACKGROUND_NICE = 10  # a recycle's evidence is packed while the fresh guest boots


def _niced(fn: Callable[[], T], nice: int) -> Callable[[], T]:
    """`fn` run (in a worker thread) at a lower CPU priority: on Linux a thread has its own
    nice value, which the processes it starts (debugfs, e2fsck) inherit; restored after."""
    if not nice:
        return fn

    def run() -> T:
        tid = threading.get_native_id()
        old = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, old + nice)
        try:
            return fn()
        finally:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, old)

    return run


class _LoopClient:
    """snapshot.take() runs in a worker thread and wants a blocking mconsole client: this
    hands each request to the daemon's own client on the event loop."""

    def __init__(self, sup: "Supervisor", loop: asyncio.AbstractEventLoop):
        self.sup, self.loop = sup, loop

    def request(self, command: str, timeout: float | None = None) -> str:
        return asyncio.run_coroutine_threadsafe(
            self.sup.request(command, timeout), self.loop
        ).result()


class _NoPause:
    """A guest that is not running (or frozen by `warden pause`) writes nothing: copy as is."""

    def request(self, command: str, timeout: float | None = None) -> str:
        return ""


@dataclass
class DiskCopy:
    cow: Path  # a COW file no kernel writes
    paused_seconds: float
    state: str
    sync: dict[str, Any]
    base: Recorded  # the base warden recorded for it (a recycle records a new one)


def evidence_dir(daemon: "Daemon") -> Path:
    return daemon.layout.home / "evidence"


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class Operations:
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self._locks: dict[str, asyncio.Lock] = {}
        self.recycling: set[str] = set()

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # ---- the guest's disk ----------------------------------------------------------------
    async def flush_guest(self, sup: "Supervisor") -> dict[str, Any]:
        """Ask the guest kernel to write its dirty pages (`sysrq s`: an emergency sync, run
        by a kernel worker after the mconsole answers) and wait until it has: its COW file
        changed (unless nothing was dirty) and then stayed unchanged for SYNC_QUIET, at most
        SYNC_TIMEOUT. Dirty does not fall to 0 with it: the sync commits ext4's journal, and
        the committed metadata stays dirty until it is written home (seen: 44 kB for 5 s after
        "Emergency Sync complete"); the diff replays the journal on its copy. Leaves "sysrq:
        Emergency Sync" in the guest's kernel log: used before recycling (the guest is gone
        after), and on request."""
        t0 = time.monotonic()
        seen = _file_state(sup.files.cow)  # before the request: its writes cannot be missed
        before = await self._dirty(sup)
        await sup.request("sysrq s")
        changed: float | None = None  # when the COW file was last seen changed since then
        settled = False
        while time.monotonic() - t0 < SYNC_TIMEOUT:
            await asyncio.sleep(0.01)
            now_state = _file_state(sup.files.cow)
            if now_state != seen:
                seen, changed = now_state, time.monotonic()
            wrote = changed is not None or before == 0
            quiet = time.monotonic() - (changed if changed is not None else t0) >= SYNC_QUIET
            if wrote and quiet:
                settled = True
                break
        left = await self._dirty(sup)
        return {
            "seconds": round(time.monotonic() - t0, 3),
            "dirty_kib_before": before,
            "dirty_kib_after": left,
            "settled": settled,
        }

    @staticmethod
    async def _dirty(sup: "Supervisor") -> int | None:
        try:
            text = await sup.request("proc meminfo", 2.0)
        except WardenError:
            return None
        found = dict(_MEMINFO.findall(text[:65536]))
        if "Dirty" not in found:
            return None
        return int(found["Dirty"]) + int(found.get("Writeback", 0))

    async def copy_disk(self, sup: "Supervisor", store: Path, sync: bool) -> DiskCopy:
        """A copy of the guest's COW file in `store`, the guest paused only for the copy."""
        state = str(sup.machine.state)
        synced: dict[str, Any] = {}
        if sup.machine.state is m.State.RUNNING:
            if sync:
                synced = await self.flush_guest(sup)
            client: snapshot.CommandClient = _LoopClient(sup, asyncio.get_running_loop())
        elif sup.machine.state in m.LIVE and sup.machine.state is not m.State.PAUSED:
            raise Conflict(f"{sup.name} is {state}; wait until it is running or stopped")
        else:
            client = _NoPause()
        if not sup.files.cow.exists():
            raise WardenError(f"{sup.name} has no disk ({sup.files.cow}): it was never created")
        rec = recorded(sup)
        loop = asyncio.get_running_loop()
        snap = await loop.run_in_executor(
            None, lambda: snapshot.take(sup.files.cow, client, "disk", store=store, recorded=rec)
        )
        paused = snap.paused_seconds if isinstance(client, _LoopClient) else 0.0
        return DiskCopy(snap.cow, paused, state, synced, rec)

    # ---- timeline ------------------------------------------------------------------------
    async def timeline(
        self, name: str, boot: int | None, since: str | None, sync: bool
    ) -> collect.Timeline:
        sup = self.daemon.sup(name)
        async with self.lock(name):
            work = self._workdir(name, "timeline")
            try:
                disk: DiskCopy | None = None
                problem = ""
                try:
                    disk = await self.copy_disk(sup, work, sync)
                except WardenError as e:
                    problem = str(e)
                tl = await self._collect(sup, boot, since, disk, problem)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return tl

    async def _collect(
        self,
        sup: "Supervisor",
        boot: int | None,
        since: str | None,
        disk: DiskCopy | None,
        problem: str = "",
        disk_boot: int | None = None,
        nice: int = 0,
    ) -> collect.Timeline:
        def read_disk() -> diffmod.DiffReport:
            if disk is None:
                raise WardenError(problem or "no copy of the disk")
            return diffmod.diff(disk.cow, recorded=rec)

        def read_snapshot(cow: Path) -> diffmod.DiffReport:
            return diffmod.diff(cow, recorded=rec)

        rec = disk.base if disk is not None else recorded(sup)
        addresses = [n.ip for n in sup.spec.nics if n.ip]
        store = self.daemon.c.store
        loop = asyncio.get_running_loop()
        tl = await loop.run_in_executor(
            None,
            _niced(
                lambda: collect.collect(
                    self.daemon.layout,
                    sup.name,
                    store,
                    boot=boot,
                    since=since,
                    read_disk=read_disk,
                    read_snapshot=read_snapshot,
                    disk_boot=disk_boot,
                    static_addresses=addresses,
                ),
                nice,
            ),
        )
        if disk is not None:
            tl.disk |= {"paused_seconds": round(disk.paused_seconds, 6), "state": disk.state}
            if disk.sync:
                tl.disk["sync"] = disk.sync
        return tl

    def _workdir(self, name: str, what: str) -> Path:
        d = evidence_dir(self.daemon) / f".work-{name}-{what}-{time.time_ns()}"
        d.mkdir(parents=True)
        return d

    # ---- evidence ------------------------------------------------------------------------
    async def evidence(self, name: str, out: Path | None, sync: bool) -> dict[str, Any]:
        sup = self.daemon.sup(name)
        async with self.lock(name):
            work = self._workdir(name, "evidence")
            try:
                disk = await self.copy_disk(sup, work, sync)
                return await self._pack(sup, sup.boot, disk, out, "evidence")
            finally:
                shutil.rmtree(work, ignore_errors=True)

    async def _pack(
        self,
        sup: "Supervisor",
        boot: int,
        disk: DiskCopy | None,
        out: Path | None,
        reason: str,
        nice: int = 0,
    ) -> dict[str, Any]:
        tl = await self._collect(sup, boot, None, disk, disk_boot=boot, nice=nice)
        top = f"{sup.name}-boot{boot}-{_stamp()}"
        target = out if out is not None else evidence_dir(self.daemon) / f"{top}.tar"
        layout = self.daemon.layout
        loop = asyncio.get_running_loop()

        def pack() -> dict[str, Any]:
            members = [
                archive.Member(
                    "timeline.json", (json.dumps(tl.as_json(), indent=1) + "\n").encode()
                ),
                archive.Member("timeline.html", render.html_page(tl.entries, tl.meta()).encode()),
            ]
            members += self._log_members(sup.name, boot)
            disk_meta: dict[str, Any] = {"form": "none", "reason": "no copy of the disk"}
            if disk is not None:
                size = os.stat(disk.base.base).st_size
                cow_members, disk_meta = archive.cow_members(disk.cow, size)
                members += cow_members
            manifest = {
                "machine": sup.name,
                "boots": [boot],
                "reason": reason,
                "home": str(layout.home),
                "guest": {
                    "state": disk.state if disk else str(sup.machine.state),
                    "paused_seconds": round(disk.paused_seconds, 6) if disk else 0.0,
                    "sync": disk.sync if disk else {},
                },
                "disk": disk_meta,
                "timeline": tl.meta(),
            }
            return archive.pack(target, top, members, manifest, signing.host_key(layout))

        doc = await loop.run_in_executor(None, _niced(pack, nice))
        result = {
            "path": str(target),
            "files": len(doc["files"]),
            "bytes": sum(f["size"] for f in doc["files"]),
            "key_id": doc["signer"]["key_id"],
            "paused_seconds": doc["guest"]["paused_seconds"],
            "timeline": doc["timeline"]["counts"],
        }
        self.daemon.c.event(sup.name, "evidence-kept", boot=boot, reason=reason, **result)
        return result

    def _log_members(self, name: str, boot: int) -> list[archive.Member]:
        layout = self.daemon.layout
        members = [
            archive.Member(f"logs/{ref.path.name}", ref.path)
            for ref in logstore.find(layout, name, boot=boot, archived=False)
        ]
        logs = sources.logs_dir(layout, name)
        for extra in (logs / f"kernel-{boot}.log", logs / logstore.MANIFEST):
            if extra.exists():
                members.append(archive.Member(f"logs/{extra.name}", extra))
        for p in sources.captures(layout, name, {boot}):
            members.append(archive.Member(f"pcap/{p.name}", p))
        return members

    # ---- recycle -------------------------------------------------------------------------
    async def recycle(
        self, name: str, reason: str, sync: bool = True, wait_evidence: bool = False
    ) -> dict[str, Any]:
        sup = self.daemon.sup(name)
        if name in self.recycling:
            raise Conflict(f"{name} is being recycled already")
        self.recycling.add(name)
        try:
            t0 = time.monotonic()
            async with self.lock(name):
                result, moved, boot = await self._drop_and_boot(sup, reason, sync)
            result["seconds_to_start"] = round(time.monotonic() - t0, 3)
        except BaseException:
            self.recycling.discard(name)
            raise
        if moved is None:
            self.recycling.discard(name)
            return result
        task = spawn(self._keep(sup, boot, moved, reason, result), f"evidence:{name}")
        if wait_evidence:
            result["evidence"] = await task
        return result

    async def _drop_and_boot(
        self, sup: "Supervisor", reason: str, sync: bool
    ) -> tuple[dict[str, Any], DiskCopy | None, int]:
        state = sup.machine.state
        if state is m.State.ABSENT:
            raise Conflict(f"{sup.name} is not created yet: nothing to recycle")
        if state in (m.State.STARTING, m.State.STOPPING):
            raise Conflict(f"{sup.name} is {state}; wait until it is running or stopped")
        boot = sup.boot
        synced: dict[str, Any] = {}
        t_kill = 0.0
        if state in (m.State.RUNNING, m.State.PAUSED):
            if sync and state is m.State.RUNNING:
                with contextlib.suppress(WardenError):
                    synced = await self.flush_guest(sup)
            t = time.monotonic()
            await self.daemon.kill_machine(sup.name, wait=True)
            t_kill = time.monotonic() - t
        moved: DiskCopy | None = None
        if sup.files.cow.exists():
            base = recorded(sup)
            store = self._workdir(sup.name, "recycle")
            target = store / snapshot.COW_NAME
            os.rename(sup.files.cow, target)
            moved = DiskCopy(target, 0.0, str(state), synced, base)
        sup.reset()
        self.daemon.start_machine(sup.name)
        self.daemon.c.event(sup.name, "recycled", boot=boot, reason=reason)
        result = {
            "machine": sup.name,
            "old_boot": boot,
            "reason": reason,
            "sync": synced,
            "kill_seconds": round(t_kill, 3),
        }
        return result, moved, boot

    async def _keep(
        self, sup: "Supervisor", boot: int, moved: DiskCopy, reason: str, info: dict[str, Any]
    ) -> dict[str, Any]:
        """Pack the old boot's evidence once the new boot is up and the old logs are closed."""
        try:
            with contextlib.suppress(TimeoutError):
                await sup.wait_state((m.State.RUNNING, m.State.CRASHED, m.State.STOPPED), 120)
            await self._logs_closed(sup.name, boot)
            return await self._pack(
                sup, boot, moved, None, f"recycle: {reason}", nice=BACKGROUND_NICE
            )
        except Exception as e:
            self.daemon.c.event(sup.name, "evidence-failed", boot=boot, error=str(e))
            return {"error": str(e)}
        finally:
            shutil.rmtree(moved.cow.parent, ignore_errors=True)
            self.recycling.discard(sup.name)

    async def _logs_closed(self, name: str, boot: int) -> None:
        """Until no log of `boot` is live or waiting to be compressed (at most CLOSE_TIMEOUT)."""
        deadline = time.monotonic() + CLOSE_TIMEOUT
        layout = self.daemon.layout
        while time.monotonic() < deadline:
            refs = logstore.find(layout, name, boot=boot, archived=False)
            if all(r.compressed for r in refs):
                return
            await asyncio.sleep(0.05)
