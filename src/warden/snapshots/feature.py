"""Snapshots and diffs of machines by name (GET/POST /v1/machines/NAME/snapshots, .../diff).

A running guest holds its COW file locked, so `diff` of a running guest reads a snapshot taken
for the purpose (and removed afterwards): the answer is consistent and the guest pauses only
for the copy of what it wrote. The copies run off the loop; a running guest's `stop`/`go`
reach it through the daemon's own mconsole client on the loop.
"""

import asyncio
import time
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import Core, Feature, Guest
from warden.disk import backing, snapshot
from warden.disk import diff as diffmod
from warden.disk.backing import Recorded
from warden.errors import Conflict


def _client(guest: Guest) -> "snapshot.CommandClient":
    if guest.state in (m.State.RUNNING, m.State.PAUSED):
        return snapshot.LoopClient(guest.request, asyncio.get_running_loop())
    if guest.state in m.LIVE:
        raise Conflict(f"{guest.name} is {guest.state}; wait until it is running or stopped")
    return snapshot.NoPause()


def recorded(guest: Guest) -> Recorded:
    return backing.recorded_base(guest.name, guest.base)


class SnapshotFeature(Feature):
    name = "snapshots"

    def __init__(self, core: Core):
        self.core = core

    async def take(self, name: str, snap: str | None) -> dict[str, Any]:
        guest = self.core.guests.require(name)
        snap = snap or time.strftime("%Y%m%d-%H%M%S")
        client = _client(guest)
        loop = asyncio.get_running_loop()
        rec = recorded(guest)
        s = await loop.run_in_executor(
            None, lambda: snapshot.take(guest.files.cow, client, snap, recorded=rec)
        )
        self.core.event(
            guest.name, "snapshot", snapshot=s.name, paused_ms=round(s.paused_seconds * 1e3)
        )
        return s.as_json() | {"path": str(s.cow)}

    async def listing(self, name: str) -> list[dict[str, Any]]:
        guest = self.core.guests.require(name)
        loop = asyncio.get_running_loop()
        snaps = await loop.run_in_executor(None, snapshot.list_snapshots, guest.files.cow)
        return [s.as_json() | {"path": str(s.cow)} for s in snaps]

    async def restore(self, name: str, snap: str) -> dict[str, Any]:
        guest = self.core.guests.require(name)
        if guest.state in m.LIVE:
            raise Conflict(f"{guest.name} is {guest.state}; stop it before a restore")
        loop = asyncio.get_running_loop()
        rec = recorded(guest)
        s = await loop.run_in_executor(
            None, lambda: snapshot.restore(guest.files.cow, snap, recorded=rec)
        )
        self.core.event(guest.name, "snapshot-restored", snapshot=s.name)
        return s.as_json()

    async def delete(self, name: str, snap: str) -> dict[str, Any]:
        guest = self.core.guests.require(name)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, snapshot.delete, guest.files.cow, snap)
        return {"deleted": snap}

    async def diff(self, name: str) -> dict[str, Any]:
        guest = self.core.guests.require(name)
        loop = asyncio.get_running_loop()
        rec = recorded(guest)
        if guest.state in m.LIVE:
            client = _client(guest)
            temp = f"diff-{time.time_ns()}"
            s = await loop.run_in_executor(
                None, lambda: snapshot.take(guest.files.cow, client, temp, recorded=rec)
            )
            try:
                report = await loop.run_in_executor(None, lambda: diffmod.diff(s.cow, recorded=rec))
            finally:
                await loop.run_in_executor(None, snapshot.delete, guest.files.cow, temp)
        else:
            report = await loop.run_in_executor(
                None, lambda: diffmod.diff(guest.files.cow, recorded=rec)
            )
        out: dict[str, Any] = report.as_json()
        return out
