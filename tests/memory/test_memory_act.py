"""act.py against a real guest (no daemon): safe unplug steps, and mconsole timing out in
the middle of an action (the guest frozen right as the `config mem` goes out), after which
the ledger is reconciled from the guest's own counters."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.rawboot import RawGuest
from warden.memory import observe
from warden.memory.act import Actuator
from warden.memory.ledger import Ledger, estimate_plugged
from warden.memory.policy import Config
from warden.paths import Layout
from warden.uml import mconsole

pytestmark = pytest.mark.guest
MIB = 1 << 20
SIZE = 256 * MIB


@pytest.fixture
def guest(home: Layout, minimal_image: Path) -> Iterator[RawGuest]:
    # In the short WARDEN_HOME: mconsole socket paths must stay below 108 bytes.
    g = RawGuest(home, minimal_image, home.home / "disk.cow", memory=SIZE)
    try:
        g.start()
        g.wait_prompt(60)
        yield g
    finally:
        g.close()


class Harness:
    """A real mconsole client; `freeze_on` freezes the guest's cgroup just as a matching
    command is sent (the guest then cannot answer: a true timeout), thawing it later."""

    def __init__(self, g: RawGuest):
        self.g = g
        self.client = mconsole.AsyncClient(g.uml_dir / g.name / "mconsole", g.uml_dir / "reply")
        self.freeze_on: str | None = None
        self.thaw_after = 4.0
        self.records: list[tuple[str, dict[str, Any]]] = []

    def record(self, kind: str, **fields: Any) -> None:
        self.records.append((kind, fields))

    async def request(self, command: str, timeout: float | None = None) -> str:
        if self.freeze_on is not None and command.startswith(self.freeze_on):
            self.freeze_on = None
            self.g.cg.freeze()
            asyncio.get_running_loop().call_later(self.thaw_after, self.g.cg.thaw)
        return await self.client.request(command, timeout)


async def setup(h: Harness) -> tuple[Ledger, Actuator, int]:
    mem = await observe.meminfo(h.request)
    led = Ledger(budget=1 << 30)
    led.boot("g", SIZE)
    e = led.up("g", SIZE)
    e.baseline = mem.unaccounted
    return led, Actuator(led, h.record), mem.unaccounted


async def estimate(h: Harness, baseline: int) -> int:
    return estimate_plugged(await observe.meminfo(h.request), SIZE, baseline)


def test_unplug_steps_are_bounded_and_exact(guest: RawGuest) -> None:
    async def main() -> None:
        h = Harness(guest)
        led, act, base = await setup(h)
        cfg = Config(budget=1 << 30, max_step=64 * MIB)
        taken = await act.unplug("g", h.request, 150 * MIB, cfg, 0, None, "test")
        assert taken == 150 * MIB
        steps = [f["kib"] for k, f in h.records if k == "act"]
        assert steps == [65536, 65536, 22 * 1024]  # 64 + 64 + 22 MiB, each looked at first
        assert led.entries["g"].hi == SIZE - 150 * MIB
        assert abs(await estimate(h, base) - led.entries["g"].hi) <= 2 * MIB
        # It never takes the guest below its working set, however much is asked.
        taken = await act.unplug("g", h.request, SIZE, cfg, 0, None, "test")
        mem = await observe.meminfo(h.request)
        assert mem.available >= 8 * MIB
        assert abs(await estimate(h, base) - led.entries["g"].hi) <= 2 * MIB
        given = await act.plug("g", h.request, SIZE, "test", urgent=False)
        assert led.entries["g"].hi == SIZE and given == 150 * MIB + taken
        h.client.close()

    asyncio.run(main())
    assert "panic" not in guest.output.decode(errors="replace").lower()


@pytest.mark.parametrize("op", ["unplug", "plug"])
def test_timeout_during_an_action_is_reconciled(guest: RawGuest, op: str) -> None:
    async def main() -> None:
        h = Harness(guest)
        led, act, base = await setup(h)
        cfg = Config(budget=1 << 30)
        if op == "plug":
            await act.unplug("g", h.request, 100 * MIB, cfg, 0, None, "prepare")
        before = led.entries["g"].hi
        h.freeze_on = "config mem="
        if op == "unplug":
            done = await act.unplug("g", h.request, 64 * MIB, cfg, 0, None, "test")
        else:
            done = await act.plug("g", h.request, 64 * MIB, "test", urgent=False)
        e = led.entries["g"]
        assert done == 0
        failed = [f for k, f in h.records if k == "act" and not f["ok"]]
        assert failed and "within the timeout" in failed[-1]["err"]
        # Still frozen: the reconcile could not read the guest, so the entry stays a range
        # and the budget counts its upper end.
        assert not e.certain
        assert (e.lo, e.hi) in ((before - 64 * MIB, before), (before, before + 64 * MIB))
        assert led.total() == max(before, before + (64 * MIB if op == "plug" else 0))
        await asyncio.sleep(h.thaw_after + 0.5)
        assert await act.reconcile("g", h.request)
        # The late command ran after the thaw: the ledger now says so, and agrees with the
        # guest's own counters.
        want = before - 64 * MIB if op == "unplug" else before + 64 * MIB
        assert e.certain and e.hi == want, (e.hi >> 20, want >> 20)
        assert abs(await estimate(h, base) - e.hi) <= 2 * MIB
        assert any(k == "ev" and f["what"] == "reconcile" for k, f in h.records)
        # And actions work again.
        await act.plug("g", h.request, SIZE, "after", urgent=False)
        assert e.hi == SIZE and abs(await estimate(h, base) - SIZE) <= 2 * MIB
        h.client.close()

    asyncio.run(main())
    assert guest.proc is not None and guest.proc.poll() is None, "the guest died"
