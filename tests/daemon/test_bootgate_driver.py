"""Boot admission driven without guests: fake kernels (tests/support/fakekernel.py) behind
real supervisors, a BootGate of one slot, and a boot timeout shorter than the whole storm: the
boots run one at a time, the waiting ones say so, none times out, a queued one can be killed."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_supervisor_driver import events
from tests.support.fakekernel import FakeLauncher
from tests.support.loopcheck import run_driver
from warden.daemon import machine as m
from warden.daemon.admission import Settings
from warden.daemon.bootgate import BootGate
from warden.daemon.context import Context
from warden.daemon.supervisor import Supervisor
from warden.host import cgroup
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.progress import NullProgress
from warden.spec import fleet as fleetmod
from warden.store import Store

N = 5
UP_AFTER = 0.4  # each fake kernel's boot
BOOT_TIMEOUT = 2.5  # shorter than N boots one after another, longer than one


@pytest.fixture
def guest_home(home: Layout, minimal_image: Path) -> Layout:
    minimal.build(ImageStore(home), NullProgress())
    return home


def build(home: Layout) -> tuple[Context, list[Supervisor]]:
    fleet = fleetmod.parse(FLEET_HEAD + "".join(machine_toml(f"b{i}") for i in range(N)), "t")
    ctx = Context(home, Store(home.db), cgroup.detect(), ImageStore(home), fleet)
    ctx.launcher = FakeLauncher(up_after=UP_AFTER)
    ctx.boots = BootGate(1, home.home / "no-such-group", interval=0.1, settings=Settings(per_cpu=1))
    sups = []
    for spec in fleet.machines:
        sup = ctx.machines[spec.name] = Supervisor(ctx, spec)
        sups.append(sup)
    return ctx, sups


def test_a_storm_boots_one_at_a_time_and_none_times_out(
    guest_home: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(m, "BOOT_TIMEOUT", BOOT_TIMEOUT)
    ctx, sups = build(guest_home)
    got: dict[str, Any] = {"most": 0, "waiting": set()}

    async def main() -> None:
        t0 = time.monotonic()
        for sup in sups:
            sup.create()
            sup.post(m.Start())
        while not all(s.state is m.State.RUNNING for s in sups):
            assert time.monotonic() - t0 < 30, [
                (s.name, s.state, s.machine.last_exit) for s in sups
            ]
            # kernels launched and not up yet: the boots running at once
            booting = [s for s in sups if s.state is m.State.STARTING and s.pid is not None]
            got["most"] = max(got["most"], len(booting))
            for s in sups:
                if s.info()["waiting"]:
                    got["waiting"].add(s.info()["waiting"].split(":")[0])
            await asyncio.sleep(0.02)
        got["took"] = time.monotonic() - t0
        got["waiting_after"] = [s.info()["waiting"] for s in sups]
        for sup in sups:
            sup.post(m.Kill())
        for sup in sups:
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 20)
        await ctx.boots.close()
        ctx.store.close()

    run_driver(main)
    assert got["most"] == 1
    assert got["waiting"] == {"boot queued"}
    assert got["took"] > BOOT_TIMEOUT  # the storm outlasted one boot timeout ...
    assert got["waiting_after"] == [None] * N  # ... and every guest came up
    kinds = [k for k, _ in events(guest_home)]
    assert kinds.count("queued") == N - 1 and kinds.count("admitted") == N - 1
    assert "boot-timeout" not in kinds


def test_a_queued_boot_killed_is_stopped_at_once_and_gives_up_its_place(
    guest_home: Layout,
) -> None:
    ctx, sups = build(guest_home)
    got: dict[str, Any] = {}

    async def main() -> None:
        for sup in sups[:3]:
            sup.create()
            sup.post(m.Start())
        await asyncio.sleep(0.05)
        last = sups[2]
        assert last.machine.queued, "the third boot should wait behind the first"
        last.post(m.Kill())
        got["state"] = last.state
        got["exit"] = last.machine.last_exit
        got["queue"] = ctx.boots.policy.queued()
        for sup in sups[:2]:
            await sup.wait_state((m.State.RUNNING,), 20)
        got["launched"] = len(ctx.launcher.plans)  # type: ignore[attr-defined]
        for sup in sups[:2]:
            sup.post(m.Kill())
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 20)
        await ctx.boots.close()
        ctx.store.close()

    run_driver(main)
    assert got["state"] is m.State.STOPPED
    assert got["exit"] == {"reason": "killed while its boot was queued"}
    assert got["queue"] == ["b1"]
    assert got["launched"] == 2  # the killed one never launched
