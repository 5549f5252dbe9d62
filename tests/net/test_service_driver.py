"""NetService driven without a namespace: a fake network helper (the AgentClient the service
is given: warden.net.service.AgentFactory) answers from a table, slowly when told to, as the
real one blocks on its socket for up to CALL_TIMEOUT. Each test runs under asyncio debug with
every callback timed (tests/support/loopcheck.py): a helper call made on the loop fails it.
"""

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD
from tests.support.loopcheck import Ticker, run_driver
from warden.daemon import machine as m
from warden.daemon.context import Context
from warden.daemon.files import MachineFiles
from warden.daemon.seam import BootExtras
from warden.errors import Conflict
from warden.host import cgroup
from warden.images.store import ImageStore
from warden.net import names
from warden.net.errors import NetError
from warden.net.service import NetService
from warden.paths import Layout
from warden.spec import fleet as fleetmod
from warden.spec.fleet import Fleet
from warden.store import Store

LAN = '[[network]]\nname = "lan0"\nsubnet = "10.77.0.0/24"\nnat = true\n'
WEB = (
    '[[machine]]\nname = "web1"\nowner = "alice"\nmemory = "64M"\n'
    'nics = [{ network = "lan0" }]\nforwards = ["tcp:18080:80"]\n'
)
SLOW = 0.3  # seconds each helper call takes when the helper is slow


@dataclass
class FakeAgent:
    """What NetService uses of warden.net.client.AgentClient, answering from a table."""

    netns: str
    create: bool
    log: Path
    delay: float = 0.0
    busy: set[int] = field(default_factory=set)  # host ports already bound
    silent: bool = False  # every call ends as the real one does when no answer comes
    hello: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    def start(self) -> "FakeAgent":
        time.sleep(self.delay)  # the real start waits for the helper's hello
        self.started = True
        return self

    def alive(self) -> bool:
        return self.started and not self.closed

    def call_fds(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        time.sleep(self.delay)
        self.calls.append((op, args))
        if self.silent:
            raise NetError(f"the network helper for {self.netns or 'the host'} did not answer")
        if op == "nft":
            return ({"nftables": []} if args.get("args") else None), []
        if op == "links":
            return [], []
        if op == "addresses":
            return [], []
        if op == "port_free":
            return {"free": args["port"] not in self.busy}, []
        if op == "tap":
            r, w = os.pipe()
            os.close(w)
            return {"created": True}, [r]  # stands for the tap's fd: the kernel's to keep
        if op == "delete_link":
            return False, []
        raise AssertionError(f"the test did not expect {op} {args}")

    def call(self, op: str, **args: Any) -> Any:
        result, fds = self.call_fds(op, **args)
        for fd in fds:
            os.close(fd)
        return result

    async def acall(self, op: str, **args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.call(op, **args))

    async def acall_fds(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.call_fds(op, **args))

    def close(self) -> None:
        self.closed = True


class Agents:
    """The factory the service is given: every helper it makes, made as `template` says."""

    def __init__(self, **template: Any):
        self.template = template
        self.made: list[FakeAgent] = []

    def __call__(self, netns: str, create: bool, log: Path) -> FakeAgent:
        a = FakeAgent(netns, create, log, **self.template)
        self.made.append(a)
        return a


@dataclass
class FakeGuest:
    """What guest_up and guest_down read of a guest."""

    spec: fleetmod.Machine
    files: MachineFiles
    boot: int = 0
    state: m.State = m.State.STARTING

    @property
    def name(self) -> str:
        return self.spec.name


def service(home: Layout, agents: Agents, text: str) -> tuple[NetService, Context]:
    fleet = fleetmod.parse(FLEET_HEAD + text, "t.toml")
    ctx = Context(home, Store(home.db), cgroup.detect(), ImageStore(home), fleet)
    return NetService(ctx, agents), ctx  # type: ignore[arg-type]


def parse(text: str) -> Fleet:
    return fleetmod.parse(FLEET_HEAD + text, "new.toml")


@pytest.fixture(autouse=True)
def tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """nft, dnsmasq and tcpdump are taken as installed: the checks of them are not tested
    here (tests/net/test_checks.py), and a host without them must not skip these."""
    monkeypatch.setattr("warden.net.checks.shutil.which", lambda tool: f"/usr/sbin/{tool}")


def test_a_slow_helper_does_not_hold_the_loop_while_a_fleet_is_checked(home: Layout) -> None:
    """Each of the check's helper calls takes SLOW seconds (the real one may take up to 60 s
    before it says it got no answer); the loop serves everything else meanwhile, and the
    port the fleet wants is found bound."""
    agents = Agents(delay=SLOW, busy={18080})
    svc, ctx = service(home, agents, "")
    got: dict[str, Any] = {}

    async def main() -> None:
        async with Ticker() as ticker:
            t0 = time.monotonic()
            with pytest.raises(Conflict) as e:
                await svc.check_fleet(parse(LAN + WEB))
        got.update(seconds=time.monotonic() - t0, ticks=ticker.ticks, error=str(e.value))
        ctx.store.close()

    run_driver(main)
    assert "forward tcp:18080:80" in got["error"] and "already bound" in got["error"]
    assert got["seconds"] >= 5 * SLOW  # start, nft list, links, addresses, port_free
    assert got["ticks"] >= got["seconds"] / 0.01 / 3  # the loop kept running
    # a refused fleet leaves no helper behind
    assert len(agents.made) == 1 and agents.made[0].closed and svc.agent is None


def test_a_helper_that_never_answers_refuses_the_fleet_and_naming_why(home: Layout) -> None:
    agents = Agents(silent=True)
    svc, ctx = service(home, agents, "")
    got: dict[str, str] = {}

    async def main() -> None:
        with pytest.raises(NetError) as e:
            await svc.check_fleet(parse(LAN + WEB))
        got["error"] = str(e.value)
        ctx.store.close()

    run_driver(main)
    assert got["error"].startswith("new.toml: nftables does not work in the host's own")
    assert "did not answer" in got["error"]
    assert agents.made[0].closed and svc.agent is None


def test_an_accepted_fleet_keeps_its_helper_for_the_apply(home: Layout) -> None:
    agents = Agents()
    svc, ctx = service(home, agents, "")

    async def main() -> None:
        await svc.check_fleet(parse(LAN + WEB))
        ctx.store.close()

    run_driver(main)
    assert svc.agent is agents.made[0] and not agents.made[0].closed
    asked = [args.get("port") for op, args in agents.made[0].calls if op == "port_free"]
    assert asked == [18080]


def test_a_boot_that_fails_after_its_taps_forgets_the_guest_without_blocking(
    home: Layout,
) -> None:
    """The supervisor runs the clean-ups of a failed boot synchronously: the guest leaves the
    state at once, and its rules leave the kernel through a task that waits for the helper
    (here SLOW per call), not on the loop."""
    agents = Agents(delay=SLOW)
    svc, ctx = service(home, agents, LAN + WEB)
    spec = ctx.fleet.machines[0]
    files = MachineFiles(home.machine(spec.name), spec.name)
    files.create(spec.lines)
    guest = FakeGuest(spec, files)
    got: dict[str, Any] = {}

    async def main() -> None:
        # as reconcile leaves things: the network built, the helper running, addresses given
        helper = agents(ctx.fleet.host.netns, True, home.home / "agent.log")
        helper.started = True  # as a reconcile left it (its start is not what is tested)
        svc.agent = helper  # type: ignore[assignment]
        svc.state.networks["lan0"] = {"subnet": "10.77.0.0/24", "nat": True, "hosts": []}
        svc.state.addresses = {"web1": ["10.77.0.2"]}
        svc.state.marks = {"web1": 1}
        extras = BootExtras()
        await svc.guest_up(guest, extras)  # type: ignore[arg-type]
        assert "web1" in svc.state.live and len(extras.fds) == 1
        extras.close_fds()
        before = len(svc.agent.calls)  # type: ignore[attr-defined]
        t0 = time.monotonic()
        for fn in extras.cleanup:
            fn()
        got["cleanup"] = time.monotonic() - t0
        got["live"] = dict(svc.state.live)
        async with svc.lock:  # the task that rewrote the rules has run by then
            pass
        await asyncio.sleep(SLOW * 2)
        async with svc.lock:
            got["calls"] = svc.agent.calls[before:]  # type: ignore[attr-defined]
        ctx.store.close()

    run_driver(main)
    assert got["cleanup"] < SLOW  # the clean-up itself did not wait for the helper
    assert got["live"] == {}
    nft = [args["cmds"] for op, args in got["calls"] if op == "nft"]
    assert nft, got["calls"]
    tap = names.tap("web1", 0)
    assert tap not in repr(nft[-1])  # the ruleset written has no rule of the gone guest
