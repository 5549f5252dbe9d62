"""warden.guestinput with scripted inputs: token buckets, burst tallies and event gates, and the
per-guest event gate of the daemon's Context."""

import asyncio
import json
import sqlite3

from tests.conftest import FLEET_HEAD, machine_toml
from warden import guestinput as gi
from warden.daemon.context import Context
from warden.host import cgroup
from warden.images.store import ImageStore
from warden.paths import Layout
from warden.spec import fleet as fleetmod
from warden.store import Store


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    b = gi.Bucket(rate=10.0, burst=5.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.wait(0.0) == 0.1
    assert not b.take(0.05)
    assert b.take(0.1)  # 0.1 s at 10/s: one token
    assert b.available(100.0) == 5  # never more than the burst
    assert b.take(100.0, 5) and not b.take(100.0)
    assert b.wait(100.0, 50) == 0.5  # at most a burst is waited for
    # a clock that steps back gives nothing
    assert not b.take(99.0)


def test_a_tally_reports_a_burst_once_per_window() -> None:
    t = gi.Tally("notify-flood", "datagrams", window=10.0)
    assert t.due(0.0) is None and t.flush(0.0) is None
    for i in range(18_432):
        t.add(1.0 + i * 0.0005, "over-rate", 16)
    t.add(2.0, "garbage", 40, "mconsole notify magic 0xffffffff")
    t.add(3.0, "garbage", 40, "a second example is not kept")
    assert t.due(10.9) is None  # the burst began at 1.0
    r = t.due(11.0)
    assert r is not None
    assert r["dropped"] == 18_434 and r["bytes"] == 18_432 * 16 + 80
    assert r["reasons"] == {"garbage": 2, "over-rate": 18_432}
    assert r["summary"] == "18,434 datagrams dropped in 10.0 s"
    assert r["example"] == "mconsole notify magic 0xffffffff"
    assert t.due(30.0) is None and not t.pending  # nothing since
    t.add(31.0, "foreign", 20)
    assert t.deadline() == 41.0
    assert t.flush(32.0) == {
        "dropped": 1,
        "unit": "datagrams",
        "bytes": 20,
        "seconds": 1.0,
        "reasons": {"foreign": 1},
        "summary": "1 datagrams dropped in 1.0 s",
    }
    assert t.total == 18_435


def test_a_budget_needs_both_items_and_bytes() -> None:
    b = gi.Budget(gi.Bucket(100.0, 3.0), gi.Bucket(10.0, 100.0), gi.Tally("x", "items"))
    assert b.admit(0.0, 60)
    assert not b.admit(0.0, 60)  # 40 bytes left
    assert b.admit(0.0, 40)
    assert b.admit(0.0, 0)
    assert not b.admit(0.0, 0)  # three items a burst
    b.refuse(0.0, "garbage", 7)
    r = b.tally.flush(1.0)
    assert r is not None
    assert r["reasons"] == {"garbage": 1, "over-byte-budget": 1, "over-rate": 1}


def test_an_event_gate_lets_its_burst_through_and_counts_the_rest_by_kind() -> None:
    g = gi.EventGate(per_minute=6.0, burst=3.0, window=60.0)
    assert [g.admit(0.0, "guest-notify") for _ in range(3)] == [True] * 3
    assert not g.admit(0.0, "guest-notify")
    assert not g.admit(5.0, "ttylog-gap")
    assert g.admit(10.0, "guest-notify")  # 6 a minute: one every 10 s
    assert g.due(59.0) is None
    r = g.due(60.0)
    assert r is not None
    assert r["suppressed"] == 2 and r["kinds"] == {"guest-notify": 1, "ttylog-gap": 1}
    assert g.due(200.0) is None


def test_a_guest_that_causes_events_at_will_gets_its_budget_and_one_summary(
    home: Layout,
) -> None:
    fleet = fleetmod.parse(FLEET_HEAD + machine_toml("g1"), "t.toml")
    ctx = Context(home, Store(home.db), cgroup.detect(), ImageStore(home), fleet)

    async def main() -> None:
        for i in range(5000):
            ctx.guest_event("g1", "guest-notify", n=i)
        ctx.event("g1", "stopped")  # the daemon's own events are never held back
        ctx._report_suppressed("g1")  # as the gate's timer does a window later

    asyncio.run(main())
    ctx.store.close()
    with sqlite3.connect(home.db) as c:
        kinds = [k for (k,) in c.execute("SELECT kind FROM events ORDER BY id")]
        (summary,) = [
            json.loads(d)
            for (d,) in c.execute(
                "SELECT detail FROM events WHERE kind = ?", ("events-suppressed",)
            )
        ]
    assert kinds.count("guest-notify") == gi.EVENTS_BURST
    assert "stopped" in kinds
    assert summary["suppressed"] == 5000 - gi.EVENTS_BURST
    assert summary["kinds"] == {"guest-notify": 5000 - gi.EVENTS_BURST}
