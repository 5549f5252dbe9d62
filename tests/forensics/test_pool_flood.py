"""Spoofed SYNs do not exhaust a pool: the pool driver (warden.forensics.pooldriver) with its real
gate, policy and nftables table in network namespaces, no UML (as test_pool_gate.py: the
"guests" are servers in a namespace of their own that print the peer address they see; the
core is a stub at its seam that records events and says every guest runs).

An attacker floods port 22 with SYNs from 300 spoofed addresses (a raw socket, one SYN each,
no handshake ever completes: the guests' SYN-ACKs go back to the attacker's namespace, which
drops them). The kernel hands both warm guests to the first spoofed addresses. Before the fix
those claims lasted the pool's `idle` (10 min); now a claim without a handshake is released
after the pool's `claim_timeout` (default 5 s), unrecycled, and a real client that connects
after the flood gets a guest of its own within that bound (plus its SYN retransmissions).
"""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.support.netlab import OUTSIDE_IP
from tests.support.poollab import PoolLab
from warden.daemon import machine as m
from warden.daemon.seam import Core
from warden.forensics.operations import Operations
from warden.forensics.pooldriver import GateClient, PoolDriver, gate_pools
from warden.forensics.poolpolicy import PoolPolicy, Slot
from warden.spec.pool import Pool
from warden.tasks import spawn

pytestmark = pytest.mark.guest  # root and network namespaces

ADDRS = ("10.66.0.50", "10.66.0.51")
SPOOFED = [f"100.{64 + i // 250}.{i % 250}.7" for i in range(300)]  # 300 different /24s


class StubCore:
    """The core at its seam: events recorded, every guest running; nothing else is used while
    no guest is started or recycled (the test fails if one is: `require` is missing)."""

    def __init__(self) -> None:
        self.events: list[tuple[str | None, str, dict[str, Any]]] = []
        running = SimpleNamespace(state=m.State.RUNNING)
        self.guests = SimpleNamespace(get=lambda name: running)

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        self.events.append((machine, kind, detail))


@pytest.fixture
def lab() -> Iterator[PoolLab]:
    with PoolLab(list(ADDRS)) as lab:
        # Replies to the spoofed addresses go back to the attacker's namespace (which drops
        # them: the addresses are not its own), as on the internet, where nobody answers.
        lab.run(lab.host, "ip", "route", "add", "100.64.0.0/10", "via", OUTSIDE_IP)
        yield lab


async def _pool_with_warm_guests(lab: PoolLab, log: Path) -> tuple[PoolDriver, StubCore]:
    core = StubCore()
    driver = PoolDriver(cast(Core, core), cast(Operations, None))
    pool = Pool(name="ssh", owner="alice", network="n", addresses=ADDRS, size=2, wait=2)
    driver.gate = await GateClient(lab.host, log).start()
    await driver.gate.call("setup", pools=gate_pools((pool,)))
    driver.pools = (pool,)
    # As PoolDriver.start makes it (claim_timeout: the default).
    policy = PoolPolicy(list(pool.guests), size=pool.size, idle=pool.idle, wait=pool.wait)
    driver.policies["ssh"] = policy
    for g in pool.guests:
        driver.pool_of[g] = pool
        policy.state[g].slot = Slot.BOOTING  # "booted" by hand: the servers run
        await driver._run(pool, policy.ready(g, time.monotonic()))
    assert policy.offered == pool.guests
    driver._task = spawn(driver._loop(), "pool driver")
    return driver, core


def test_a_flood_of_spoofed_syns_holds_the_guests_only_briefly(
    lab: PoolLab, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, float, list[Any], dict[str, Any]]:
        driver, core = await _pool_with_warm_guests(lab, tmp_path / "gate.log")
        try:
            await asyncio.to_thread(lab.spoof_syns, lab.outside, SPOOFED)
            t0 = time.monotonic()
            while any(driver.policies["ssh"].src_of(g) is None for g in ("ssh-1", "ssh-2")):
                assert time.monotonic() - t0 < 5, "the flood did not take the warm guests"
                await asyncio.sleep(0.1)
            taken = {g: driver.policies["ssh"].src_of(g) for g in ("ssh-1", "ssh-2")}
            assert set(taken.values()) <= set(SPOOFED), taken
            # A real client after the flood: its SYNs (retransmitted at 1, 3, 7 s) until its
            # handshake completes, then the server's line.
            t1 = time.monotonic()
            answer = await asyncio.to_thread(lab.connect, lab.outside, timeout=30)
            took = time.monotonic() - t1
            await asyncio.sleep(0.6)  # the driver's next polls: its handshake, confirmed
            status = driver.status()["ssh"]
            return answer, took, list(core.events), status
        finally:
            await driver.stop()

    answer, took, events, status = asyncio.run(scenario())
    print(f"the real client: {answer!r} after {took:.1f} s")
    assert answer.startswith("SSH-2.0-10.66.0.5") and f"sees {OUTSIDE_IP} " in answer, answer
    released = [e for e in events if e[1] == "pool-released"]
    assert {e[2]["src"] for e in released} <= set(SPOOFED) and len(released) >= 1, events
    assert all(e[1] in ("pool-claimed", "pool-released") for e in events), events
    mine = [g for g, s in status.items() if s["src"] == OUTSIDE_IP]
    assert len(mine) == 1 and status[mine[0]]["slot"] == "taken", status
