"""The storage watch's driver at the seam, without guests: fake guests whose COW files the test
grows, a scripted statvfs, a Control that records pauses. What it proves is the wiring (who is
paused and resumed, with which reason and events, what a new daemon takes back); that a real
guest is saved by it is tests/storage/test_home_floor_guest.py."""

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from warden.daemon import machine as m
from warden.errors import Conflict
from warden.paths import layout
from warden.spec.fleet import Fleet, Host
from warden.storage.feature import StorageFeature

MiB = 1 << 20
SIZE = 1024 * MiB
FLOOR = 64 * MiB


@dataclass
class FakeGuest:
    name: str
    cow: Path
    state: m.State = m.State.RUNNING
    pause_reason: str = ""

    @property
    def files(self) -> Any:
        return SimpleNamespace(cow=self.cow)

    def grow(self, mib: int) -> None:
        with open(self.cow, "ab") as f:
            f.write(os.urandom(mib * MiB))


@dataclass
class FakeCore:
    home: Path
    guests_: dict[str, FakeGuest] = field(default_factory=dict)
    events: list[tuple[str | None, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layout = layout(self.home)
        self.fleet = Fleet(source="t.toml", host=Host(home_floor=FLOOR))
        self.control = self

    # Guests
    @property
    def guests(self) -> "FakeCore":
        return self

    def __iter__(self) -> Iterator[FakeGuest]:
        return iter(list(self.guests_.values()))

    def get(self, name: str) -> FakeGuest | None:
        return self.guests_.get(name)

    # Control
    def pause(self, name: str, reason: str) -> None:
        g = self.guests_[name]
        if g.state is m.State.PAUSED and g.pause_reason != reason:
            g.pause_reason = reason
            return
        if g.state is not m.State.RUNNING:
            raise Conflict(f"{name} is {g.state}")
        g.state, g.pause_reason = m.State.PAUSED, reason

    def resume(self, name: str) -> None:
        g = self.guests_[name]
        g.state, g.pause_reason = m.State.RUNNING, ""

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        self.events.append((machine, kind, detail))


class Disk:
    """A statvfs whose free space the test sets."""

    def __init__(self) -> None:
        self.free = 2 * FLOOR  # low: a reading every 0.25 s (with plenty, every 2 s)

    def __call__(self, path: Any) -> Any:
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096, f_blocks=SIZE // 4096)


def setup(tmp_path: Path) -> tuple[FakeCore, StorageFeature, Disk]:
    core = FakeCore(tmp_path)
    for name in ("w", "q", "a"):
        core.guests_[name] = FakeGuest(name, tmp_path / f"{name}.cow")
        core.guests_[name].grow(1)
    feature = StorageFeature(core)  # type: ignore[arg-type]
    disk = Disk()
    feature.statvfs = disk
    return core, feature, disk


async def readings(seconds: float) -> None:
    await asyncio.sleep(seconds)


def test_the_writer_is_paused_the_others_run_and_it_resumes_when_space_returns(
    tmp_path: Path,
) -> None:
    core, feature, disk = setup(tmp_path)
    w, q, a = (core.guests_[n] for n in ("w", "q", "a"))

    async def main() -> None:
        feature.load()
        await feature.start()
        try:
            await readings(0.3)
            a.state, a.pause_reason = m.State.PAUSED, "admin"  # `warden pause a`
            disk.free = FLOOR - MiB
            w.grow(8)
            await readings(0.6)
            assert (w.state, w.pause_reason) == (m.State.PAUSED, "storage")
            assert q.state is m.State.RUNNING
            assert json.loads((tmp_path / "storage-held.json").read_text()) == ["w"]
            disk.free = FLOOR + FLOOR // 4
            await readings(0.6)
            assert w.state is m.State.RUNNING
            assert (a.state, a.pause_reason) == (m.State.PAUSED, "admin")  # never resumed
            assert json.loads((tmp_path / "storage-held.json").read_text()) == []
        finally:
            await feature.stop()

    asyncio.run(main())
    kinds = [(n, k) for n, k, _ in core.events]
    assert kinds == [("w", "storage-paused"), ("w", "storage-resumed")]
    paused = core.events[0][2]
    assert paused["free"] == FLOOR - MiB and paused["floor"] == FLOOR and paused["rate"] > 0


def test_an_admin_resume_below_the_floor_is_honoured_and_a_new_write_pauses_again(
    tmp_path: Path,
) -> None:
    core, feature, disk = setup(tmp_path)
    w = core.guests_["w"]

    async def main() -> None:
        await feature.start()
        try:
            await readings(0.3)
            disk.free = FLOOR - MiB
            w.grow(8)
            await readings(0.6)
            assert w.pause_reason == "storage"
            core.resume("w")  # `warden resume w`: the disk is still low
            await readings(0.6)
            assert w.state is m.State.RUNNING  # it writes nothing: it runs
            w.grow(4)
            await readings(0.6)
            assert (w.state, w.pause_reason) == (m.State.PAUSED, "storage")
        finally:
            await feature.stop()

    asyncio.run(main())
    assert [k for _, k, _ in core.events] == ["storage-paused", "storage-paused"]


def test_a_new_daemon_takes_back_the_guests_the_watch_held(tmp_path: Path) -> None:
    core, feature, disk = setup(tmp_path)
    (tmp_path / "storage-held.json").write_text('["w"]')
    w = core.guests_["w"]
    w.state, w.pause_reason = m.State.PAUSED, ""  # reattached: the row has no reason
    disk.free = SIZE // 2

    async def main() -> None:
        feature.load()
        await feature.start()
        try:
            await readings(0.6)
        finally:
            await feature.stop()

    asyncio.run(main())
    assert w.state is m.State.RUNNING
    assert [(n, k) for n, k, _ in core.events] == [("w", "storage-resumed")]


def test_a_floor_over_half_the_home_is_refused_naming_the_key(tmp_path: Path) -> None:
    core, feature, disk = setup(tmp_path)
    fleet = Fleet(source="f.toml", host=Host(home_floor=600 * MiB))

    async def main() -> str:
        try:
            await feature.check_fleet(fleet)
        except Exception as e:
            return str(e)
        return "accepted"

    msg = asyncio.run(main())
    assert msg.startswith("f.toml: [host] home_floor:") and "more than half" in msg, msg
