"""The Supervisor driven without a guest: a fake launcher (tests/support/fakekernel.py) starts a
small process in the guest's cgroup that binds the guest's mconsole socket and says "up" as UML
does; everything else is real (the state machine, cgroups, the notify socket, the mconsole
client, the pidfd exit watch, the features' hooks). Each test runs under asyncio debug with
every callback timed (tests/support/loopcheck.py): one that blocks the loop fails it.
"""

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.fakekernel import FakeLauncher
from tests.support.loopcheck import Ticker, run_driver
from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.seam import BootExtras, Feature, Guest
from warden.daemon.supervisor import Supervisor
from warden.errors import MconsoleError
from warden.host import cgroup
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.progress import NullProgress
from warden.spec import fleet as fleetmod
from warden.store import Store


class Recorder(Feature):
    """A feature that notes every hook it gets, and registers a clean-up per boot."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        self.calls.append("before_boot")
        extras.cleanup.append(lambda: self.calls.append("cleanup"))

    async def after_launch(self, guest: Guest, pid: int) -> None:
        self.calls.append("after_launch")

    async def on_up(self, guest: Guest) -> None:
        self.calls.append("on_up")

    async def after_exit(self, guest: Guest) -> None:
        self.calls.append("after_exit")


@pytest.fixture
def guest_home(home: Layout, minimal_image: Path) -> Layout:
    minimal.build(ImageStore(home), NullProgress())  # cached: links the image into this home
    return home


def make(home: Layout, launcher: FakeLauncher, *features: Feature) -> Supervisor:
    fleet = fleetmod.parse(FLEET_HEAD + machine_toml("d1"), "t.toml")
    ctx = Context(home, Store(home.db), cgroup.detect(), ImageStore(home), fleet)
    ctx.launcher = launcher
    ctx.features = list(features)
    sup = Supervisor(ctx, fleet.machines[0])
    ctx.machines[sup.name] = sup
    return sup


def events(home: Layout) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(home.db) as c:
        rows = c.execute("SELECT kind, detail FROM events ORDER BY id").fetchall()
    return [(k, json.loads(d) if d else {}) for k, d in rows]


async def settle(sup: Supervisor, *states: m.State, timeout: float = 20.0) -> None:
    await sup.wait_state(tuple(states), timeout)


def test_a_guest_that_never_answers_its_mconsole_is_stopped_by_escalation(
    guest_home: Layout,
) -> None:
    """`warden stop` asks politely (cad), then halt, then kills: a kernel that reads its
    mconsole and never replies gets stopped anyway, and nothing of it is left."""
    rec = Recorder()
    launcher = FakeLauncher(mode="silent")
    sup = make(guest_home, launcher, rec)
    got: dict[str, Any] = {}

    async def main() -> None:
        sup.create()
        sup.post(m.Start())
        await settle(sup, m.State.RUNNING)
        pid = sup.pid
        assert pid is not None and pid in sup.cgroup.pids()
        t0 = time.monotonic()
        sup.post(m.Stop(cad_timeout=0.5, halt_timeout=0.5))
        await settle(sup, m.State.STOPPED, m.State.CRASHED)
        got.update(seconds=time.monotonic() - t0, pid=pid, state=sup.state)
        await asyncio.sleep(0.1)  # the failed polite requests' events
        sup.ctx.store.close()

    run_driver(main)
    assert got["state"] is m.State.STOPPED
    assert got["seconds"] < 10  # 0.5 + 0.5 s and the kill, not the 5 s mconsole timeouts
    with pytest.raises(ProcessLookupError):
        os.kill(got["pid"], 0)
    assert not sup.cgroup.exists()
    escalated = [d["to"] for k, d in events(guest_home) if k == "stop-escalated"]
    assert escalated == ["halt", "kill"]
    assert rec.calls == ["before_boot", "after_launch", "on_up", "after_exit"]


def test_a_request_whose_reply_never_comes_times_out_without_holding_the_loop(
    guest_home: Layout,
) -> None:
    sup = make(guest_home, FakeLauncher(mode="silent"))
    got: dict[str, Any] = {}

    async def main() -> None:
        sup.create()
        sup.post(m.Start())
        await settle(sup, m.State.RUNNING)
        async with Ticker() as ticker:
            t0 = time.monotonic()
            with pytest.raises(MconsoleError) as e:
                await sup.request("help", timeout=0.5)
        got.update(seconds=time.monotonic() - t0, ticks=ticker.ticks, error=str(e.value))
        sup.post(m.Kill())
        await settle(sup, m.State.STOPPED, m.State.CRASHED)
        sup.ctx.store.close()

    run_driver(main)
    assert 0.45 < got["seconds"] < 3
    assert "no reply to 'help'" in got["error"]
    assert got["ticks"] >= 20  # the loop went on serving everything else meanwhile


def test_a_launch_that_fails_undoes_the_features_and_the_cgroup(guest_home: Layout) -> None:
    rec = Recorder()
    sup = make(guest_home, FakeLauncher(fail="no such kernel"), rec)
    got: dict[str, Any] = {}

    async def main() -> None:
        sup.create()
        sup.post(m.Start())
        await settle(sup, m.State.CRASHED, m.State.STOPPED)
        got.update(state=sup.state, exit=sup.machine.last_exit, mconsole=sup.mconsole)
        sup.ctx.store.close()

    run_driver(main)
    assert got["state"] in (m.State.CRASHED, m.State.STOPPED)
    assert "no such kernel" in json.dumps(got["exit"])
    assert rec.calls == ["before_boot", "cleanup"]  # no after_launch, no after_exit
    assert got["mconsole"] is None  # its sockets are closed
    assert not sup.cgroup.exists()


def test_a_guest_that_dies_before_it_is_up(guest_home: Layout) -> None:
    """A kernel that ends while booting (killed from outside): the exit is seen through the
    pidfd, the features hear of it once, the guest is stopped, not left STARTING."""
    rec = Recorder()
    launcher = FakeLauncher(up_after=None)
    sup = make(guest_home, launcher, rec)
    got: dict[str, Any] = {}

    async def main() -> None:
        sup.create()
        sup.post(m.Start())
        deadline = time.monotonic() + 20
        while not launcher.pids or sup.pid is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert sup.state is m.State.STARTING
        os.kill(launcher.pids[0], signal.SIGKILL)
        await settle(sup, m.State.CRASHED, m.State.STOPPED)
        got.update(state=sup.state, exit=sup.machine.last_exit)
        sup.ctx.store.close()

    run_driver(main)
    assert got["state"] is m.State.CRASHED
    assert got["exit"]["signal"] == signal.SIGKILL
    assert rec.calls == ["before_boot", "after_launch", "after_exit"]
    assert not sup.cgroup.exists()


def test_the_kernels_last_words_are_remembered_only_while_they_are_last(
    guest_home: Layout,
) -> None:
    """How an exit is read (machine.Exited's halted/rebooting) comes from the console: the
    kernel's halt or reboot line, unless something was printed after it."""
    sup = make(guest_home, FakeLauncher())
    sup._watch_last_words(b"\rRequesting system poweroff\r\n")
    assert (sup._halted, sup._rebooting) == (False, False)
    sup._watch_last_words(b"reboot: System halted\n")
    assert (sup._halted, sup._rebooting) == (True, False)
    sup._watch_last_words(b"\r\n")  # blank output changes nothing
    assert sup._halted
    sup._watch_last_words(b"web1:/# ")  # a file that held the words, then a prompt: not the last
    assert (sup._halted, sup._rebooting) == (False, False)
    sup._watch_last_words(b"reboot: Restarting system\n")
    assert (sup._halted, sup._rebooting) == (False, True)
    sup._watch_last_words(b"reboot: Power down\n")
    assert (sup._halted, sup._rebooting) == (True, False)
    sup.ctx.store.close()
