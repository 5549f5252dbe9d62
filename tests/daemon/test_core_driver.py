"""The Daemon driven without a guest (fake kernels: tests/support/fakekernel.py), through its
hard cases: a fleet applied while a boot is in flight, applies that come together. Under asyncio
debug with every callback timed (tests/support/loopcheck.py).
"""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.fakekernel import FakeLauncher
from tests.support.loopcheck import run_driver
from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.core import Daemon
from warden.daemon.seam import BootExtras, Feature, Guest
from warden.errors import Conflict
from warden.host import ns
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.progress import NullProgress
from warden.spec.fleet import Fleet


class Gate(Feature):
    """Holds every boot in before_boot, and every fleet check, until told to go on."""

    name = "gate"

    def __init__(self) -> None:
        self.boot = asyncio.Event()
        self.booting = asyncio.Event()
        self.check = asyncio.Event()
        self.check.set()
        self.checking = asyncio.Event()

    async def check_fleet(self, fleet: Fleet) -> None:
        self.checking.set()
        await self.check.wait()

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        self.booting.set()
        await self.boot.wait()


@pytest.fixture
def guest_home(home: Layout, minimal_image: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    minimal.build(ImageStore(home), NullProgress())
    # The daemon makes itself a child subreaper; in the test's own process that would outlive
    # the test (orphans of later tests would wait for it to reap them).
    monkeypatch.setattr(ns, "set_child_subreaper", lambda: None)
    return home


def fleet(*machines: str) -> str:
    return FLEET_HEAD + "".join(machines)


async def daemon_for(home: Layout, gate: Gate, launcher: FakeLauncher) -> Daemon:
    ctx = Context.load(home)
    ctx.launcher = launcher
    d = Daemon(ctx, [gate])
    await d.open()
    await d.start()
    return d


def test_a_fleet_applied_while_a_boot_waits_takes_effect_at_the_next_boot(
    guest_home: Layout,
) -> None:
    gate, launcher = Gate(), FakeLauncher()
    got: dict[str, Any] = {}

    async def main() -> None:
        d = await daemon_for(guest_home, gate, launcher)
        await d.apply(fleet(machine_toml("b1", autostart=False)), "v1.toml")
        d.start_machine("b1")
        await asyncio.wait_for(gate.booting.wait(), 20)
        # The boot waits in a feature; the API's apply must not wait for it.
        v2 = fleet(machine_toml("b1", autostart=False, memory="96M"))
        got["v2"] = await asyncio.wait_for(d.apply(v2, "v2.toml"), 10)
        got["during"] = d.sups["b1"].state
        # A fleet without the booting machine is refused without --prune, and changes nothing.
        with pytest.raises(Conflict) as e:
            await d.apply(fleet(machine_toml("other", autostart=False)), "v3.toml")
        got["refused"] = str(e.value)
        got["fleet"] = d.ctx.fleet.source
        gate.boot.set()
        await d.sups["b1"].wait_state((m.State.RUNNING,), 20)
        await d.stop_machine("b1", timeout=5)
        gate.boot.set()
        await asyncio.wait_for(d.start_and_wait("b1", timeout=20), 30)
        await d.shutdown(stop_guests=True, timeout=5)

    run_driver(main)
    assert got["v2"]["changed"] == ["b1"] and got["v2"]["started"] == []
    assert got["during"] is m.State.STARTING
    assert "b1" in got["refused"] and "--prune" in got["refused"]
    assert got["fleet"] == "v2.toml"
    first, second = (p.argv for p in launcher.plans)
    assert "mem=64M" in first and "mem=96M" in second


def test_applies_that_come_together_are_judged_one_after_the_other(guest_home: Layout) -> None:
    """The first apply starts a machine while the second waits for its turn: the second,
    which would drop that machine without --prune, is refused, as it would be after it."""
    gate, launcher = Gate(), FakeLauncher()
    got: dict[str, Any] = {}

    async def main() -> None:
        d = await daemon_for(guest_home, gate, launcher)
        gate.boot.set()
        gate.check.clear()
        first = asyncio.get_running_loop().create_task(  # noqa: TID251 - the test's own
            d.apply(fleet(machine_toml("c1")), "first.toml")
        )
        await asyncio.wait_for(gate.checking.wait(), 10)
        second = asyncio.get_running_loop().create_task(  # noqa: TID251 - the test's own
            d.apply(fleet(), "second.toml")
        )
        await asyncio.sleep(0.2)
        got["first_done_early"] = first.done()
        gate.check.set()
        got["first"] = await first
        with pytest.raises(Conflict) as e:
            await second
        got["second"] = str(e.value)
        got["fleet"] = d.ctx.fleet.source
        await d.shutdown(stop_guests=True, timeout=5)

    run_driver(main)
    assert not got["first_done_early"]
    assert got["first"]["added"] == ["c1"] and got["first"]["started"] == ["c1"]
    assert "c1" in got["second"] and got["fleet"] == "first.toml"
