"""The cpu feature's driver without a guest: fake kernels (tests/support/fakekernel.py) in real
cgroups, so the cpuset written, the processes' allowed CPUs and the moves are the kernel's own.
The CPU numbers assume a host with at least two CPUs warden may use (this project's machines
have two); with one, the tests that need two are skipped, saying so."""

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_supervisor_driver import events
from tests.support.fakekernel import FakeLauncher
from tests.support.loopcheck import run_driver
from warden.cpu.feature import CpuFeature
from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.supervisor import Supervisor
from warden.errors import SpecError
from warden.host import cgroup, cpuset
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.progress import NullProgress
from warden.spec import fleet as fleetmod
from warden.store import Store

HIERARCHY = cgroup.detect()
CPUS = cpuset.host_cpus(HIERARCHY)
two_cpus = pytest.mark.skipif(
    len(CPUS) < 2 or not cpuset.available(HIERARCHY),
    reason=f"needs a cpuset controller and 2 CPUs (this host: {CPUS}, {HIERARCHY.describe()})",
)


@pytest.fixture
def guest_home(home: Layout, minimal_image: Path) -> Layout:
    minimal.build(ImageStore(home), NullProgress())
    return home


def build(home: Layout, machines: str) -> tuple[Context, CpuFeature, dict[str, Supervisor]]:
    fleet = fleetmod.parse(FLEET_HEAD + machines, "t.toml")
    ctx = Context(home, Store(home.db), HIERARCHY, ImageStore(home), fleet)
    ctx.launcher = FakeLauncher()
    feature = CpuFeature(ctx, interval=3600)  # the test drives rebalance itself
    ctx.features = [feature]
    sups = {}
    for spec in fleet.machines:
        sups[spec.name] = ctx.machines[spec.name] = Supervisor(ctx, spec)
    return ctx, feature, sups


def allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def join_cgroup(sup: Supervisor) -> subprocess.Popen[bytes]:
    """A second process of the guest (as UML's per-address-space children are): it joins
    every group of the guest before it sleeps."""
    code = (
        "import sys, time\n"
        "for f in sys.argv[1:]:\n"
        "    open(f, 'w').write('0')\n"
        "print('in', flush=True)\n"
        "time.sleep(60)\n"
    )
    files = [str(p) for p in sup.cgroup.procs_files()]
    p = subprocess.Popen([sys.executable, "-c", code, *files], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"in\n"
    return p


@two_cpus
def test_guests_get_a_cpu_each_before_boot_and_move_together(guest_home: Layout) -> None:
    ctx, feature, sups = build(guest_home, machine_toml("a") + machine_toml("b"))
    got: dict[str, Any] = {}

    async def main() -> None:
        for sup in sups.values():
            sup.create()
            sup.post(m.Start())
        for sup in sups.values():
            await sup.wait_state((m.State.RUNNING,), 20)
        a, b = sups["a"], sups["b"]
        assert a.pid is not None and b.pid is not None
        got["placed"] = {n: (s.cpus, allowed(s.pid or 0), s.info()["cpu"]) for n, s in sups.items()}
        # a process start: off the loop, which the test checks is never held
        child = await asyncio.get_running_loop().run_in_executor(None, join_cgroup, a)
        try:
            got["child_before"] = allowed(child.pid)
            # a is busy and shares its CPU with a busy pinned-by-circumstance b: script the
            # readings so that a must move to the other CPU
            src = int(a.cpus or "0")
            dst = next(c for c in CPUS if c != src)
            feature.policy.adopt("b", (src,), pinned=True)
            cpuset.set_cpus(b.cgroup, (src,))
            for _ in range(feature.policy.settings.cooldown + 1):
                feature.rebalance({"a": 1.0, "b": 1.0}, {c: 0.0 for c in CPUS})
            got["after"] = (a.cpus, allowed(a.pid), allowed(child.pid), str(dst))
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        for sup in sups.values():
            sup.post(m.Kill())
        for sup in sups.values():
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 20)
        got["released"] = (feature.policy.guests(), a.cpus, a.info()["cpu"])
        ctx.store.close()

    run_driver(main)
    placed = got["placed"]
    for name, (cpus, kernel_allowed, shown) in placed.items():
        assert cpus is not None and "," not in cpus and "-" not in cpus, (name, cpus)
        assert kernel_allowed == cpus == shown, (name, placed)
    assert placed["a"][0] != placed["b"][0]  # spread: one CPU each
    assert got["child_before"] == placed["a"][0]
    cpus_after, kernel_after, child_after, dst = got["after"]
    assert cpus_after == kernel_after == child_after == dst
    assert got["released"] == ([], None, None)
    moved = [d for k, d in events(guest_home) if k == "cpu-moved"]
    assert len(moved) == 1 and moved[0]["cpu_to"] == int(dst)


@two_cpus
def test_a_pinned_guest_boots_on_its_pin(guest_home: Layout) -> None:
    last = CPUS[-1]
    ctx, feature, sups = build(guest_home, machine_toml("p", cpu=last))
    got: dict[str, Any] = {}

    async def main() -> None:
        sup = sups["p"]
        sup.create()
        sup.post(m.Start())
        await sup.wait_state((m.State.RUNNING,), 20)
        got["allowed"] = allowed(sup.pid or 0)
        sup.post(m.Kill())
        await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 20)
        ctx.store.close()

    run_driver(main)
    assert got["allowed"] == str(last)


def test_a_launch_that_fails_gives_its_cpu_back(guest_home: Layout) -> None:
    ctx, feature, sups = build(guest_home, machine_toml("f"))
    ctx.launcher = FakeLauncher(fail="no such kernel")

    async def main() -> None:
        sup = sups["f"]
        sup.create()
        sup.post(m.Start())
        await sup.wait_state((m.State.CRASHED, m.State.STOPPED), 20)
        ctx.store.close()

    run_driver(main)
    assert feature.policy.guests() == [] and sups["f"].cpus is None


def test_a_pin_the_host_does_not_have_is_refused_naming_the_allowed_cpus(
    guest_home: Layout,
) -> None:
    bad = max(CPUS) + 1
    ctx, feature, _ = build(guest_home, machine_toml("ok", cpu=CPUS[0]))
    fleet = fleetmod.parse(FLEET_HEAD + machine_toml("x", cpu=[CPUS[0], bad]), "f.toml")
    with pytest.raises(SpecError) as e:
        asyncio.run(feature.check_fleet(fleet))
    assert str(e.value) == (
        f"f.toml: machine 'x': cpu = {[CPUS[0], bad]}: CPU {bad} is not one warden may use "
        f"on this host; allowed: {cpuset.format_list(CPUS)}"
    )
    asyncio.run(feature.check_fleet(ctx.fleet))  # a pin it has is fine
    ctx.store.close()


@two_cpus
def test_a_restarted_daemon_adopts_running_guests_where_they_are(guest_home: Layout) -> None:
    """A new daemon's feature (start) reads each live guest's cpuset: the policy counts it
    there and `warden ls` shows it, with no write to the guest's group."""
    ctx, feature, sups = build(guest_home, machine_toml("r", cpu=CPUS[-1]) + machine_toml("s"))
    got: dict[str, Any] = {}

    async def main() -> None:
        for sup in sups.values():
            sup.create()
            sup.post(m.Start())
        for sup in sups.values():
            await sup.wait_state((m.State.RUNNING,), 20)
        before = {n: s.cpus for n, s in sups.items()}
        for sup in sups.values():
            sup.cpus = None  # as a new daemon's supervisors start
        again = CpuFeature(ctx, interval=3600)
        await again.start()
        got["adopted"] = {n: (again.policy.where(n), s.cpus) for n, s in sups.items()}
        got["before"] = before
        await again.stop()
        for sup in sups.values():
            sup.post(m.Kill())
        for sup in sups.values():
            await sup.wait_state((m.State.STOPPED, m.State.CRASHED), 20)
        ctx.store.close()

    run_driver(main)
    for name, (where, shown) in got["adopted"].items():
        assert shown == got["before"][name] and where is not None
        assert cpuset.format_list(where) == shown
    assert got["adopted"]["r"][1] == str(CPUS[-1])
