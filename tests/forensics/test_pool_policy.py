"""The pool's assignment policy (warden.forensics.poolpolicy), with scripted observations."""

from warden.forensics.poolpolicy import (
    MAX_WAITING,
    RETRY_AFTER,
    Accept,
    Drop,
    Map,
    PoolPolicy,
    Recycle,
    Slot,
    Start,
    Unmap,
)

GUESTS = ["p-1", "p-2", "p-3"]


def warm_pool(size: int = 2, idle: float = 60, wait: float = 10) -> PoolPolicy:
    p = PoolPolicy(list(GUESTS), size=size, idle=idle, wait=wait)
    assert p.tick(0) == [Start(g) for g in GUESTS[:size]]
    for g in GUESTS[:size]:
        assert p.ready(g, 1) == []
    return p


def test_the_refill_starts_size_guests_and_no_more() -> None:
    p = PoolPolicy(list(GUESTS), size=2, idle=60, wait=10)
    assert p.tick(0) == [Start("p-1"), Start("p-2")]
    assert p.tick(1) == []  # booting ones count
    assert p.ready("p-1", 2) == [] and p.slot("p-1") is Slot.WARM


def test_two_addresses_get_two_guests_and_a_repeat_the_same() -> None:
    p = warm_pool()
    assert p.arrival("198.51.100.7", 5) == [
        Map("198.51.100.7", "p-1"),
        Accept("198.51.100.7"),
        Start("p-3"),  # the refill: one warm left, size 2
    ]
    assert p.arrival("203.0.113.9", 5) == [Map("203.0.113.9", "p-2"), Accept("203.0.113.9")]
    # A packet of the first address queued before its map was written: let through, no new guest.
    assert p.arrival("198.51.100.7", 6) == [Accept("198.51.100.7")]
    assert p.guest_of("198.51.100.7") == "p-1" and p.guest_of("203.0.113.9") == "p-2"


def test_idle_recycle_order_and_reason() -> None:
    p = warm_pool(idle=60)
    p.arrival("198.51.100.7", 5)
    p.arrival("203.0.113.9", 5)
    p.seen({"203.0.113.9"}, 50)
    out = p.tick(65)
    assert out == [Unmap("198.51.100.7"), Recycle("p-1", "pool: 198.51.100.7 idle 60s")]
    assert p.guest_of("198.51.100.7") is None and p.slot("p-1") is Slot.BOOTING
    assert p.tick(109) == []  # seen at 50: idle only from 110
    assert p.tick(110) == [Unmap("203.0.113.9"), Recycle("p-2", "pool: 203.0.113.9 idle 60s")]
    # Back warm after the recycle; the same address now gets a pristine guest.
    assert p.ready("p-1", 101) == []
    assert p.arrival("198.51.100.7", 102)[:2] == [
        Map("198.51.100.7", "p-1"),
        Accept("198.51.100.7"),
    ]


def test_an_empty_pool_boots_a_guest_for_a_waiting_address() -> None:
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=10)
    assert p.tick(0) == []
    assert p.arrival("198.51.100.7", 1) == [Start("p-1")]
    assert p.arrival("198.51.100.7", 2) == []  # a retransmitted SYN waits with the first
    assert p.ready("p-1", 4) == [Map("198.51.100.7", "p-1"), Accept("198.51.100.7")]


def test_an_exhausted_pool_holds_up_to_wait_then_drops() -> None:
    p = warm_pool(size=3, wait=10)
    p.ready("p-3", 1)
    for i, g in enumerate(GUESTS):
        assert p.arrival(f"10.0.0.{i}", 2)[0] == Map(f"10.0.0.{i}", g)
    # Every guest is taken and none is stopped: nothing to start, the address waits.
    assert p.arrival("192.0.2.1", 3) == []
    assert p.tick(12) == []
    assert p.tick(14) == [Drop("192.0.2.1", "no guest within the pool's wait")]
    # A guest freed within the wait goes to the waiting address at once.
    assert p.arrival("192.0.2.2", 58) == []
    p.seen({"10.0.0.1", "10.0.0.2"}, 58)
    assert p.tick(62) == [Unmap("10.0.0.0"), Recycle("p-1", "pool: 10.0.0.0 idle 60s")]
    assert p.ready("p-1", 65) == [Map("192.0.2.2", "p-1"), Accept("192.0.2.2")]


def test_a_waiter_past_its_deadline_is_dropped_when_a_guest_comes() -> None:
    p = PoolPolicy(["p-1"], size=0, idle=60, wait=5)
    p.arrival("192.0.2.1", 0)
    p.arrival("192.0.2.2", 4)
    assert p.ready("p-1", 7) == [
        Drop("192.0.2.1", "no guest within the pool's wait"),
        Map("192.0.2.2", "p-1"),
        Accept("192.0.2.2"),
    ]


def test_wait_zero_drops_at_once_and_waiters_are_bounded() -> None:
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=0)
    assert p.arrival("192.0.2.1", 0) == [
        Drop("192.0.2.1", "no warm guest and the pool's wait is 0")
    ]
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=10)
    for i in range(MAX_WAITING):
        p.arrival(f"10.1.{i // 250}.{i % 250}", 0)
    assert p.count(Slot.BOOTING) == 3  # one per waiter while stopped guests last
    assert p.arrival("192.0.2.9", 0) == [Drop("192.0.2.9", f"{MAX_WAITING} addresses wait already")]


def test_a_failed_guest_unmaps_and_is_retried_later() -> None:
    p = warm_pool(size=1)
    p.arrival("198.51.100.7", 2)
    assert p.failed("p-1", 3) == [Unmap("198.51.100.7")]  # p-2 already boots for the refill
    assert p.guest_of("198.51.100.7") is None and p.slot("p-1") is Slot.OFF
    assert p.failed("p-2", 4) == [Start("p-3")]  # p-1 and p-2 wait out RETRY_AFTER
    assert p.tick(5) == []
    p.failed("p-3", 6)
    assert p.tick(4 + RETRY_AFTER) == [Start("p-1")]


def test_guests_running_at_start_are_recycled_before_use() -> None:
    p = PoolPolicy(list(GUESTS), size=2, idle=60, wait=10)
    assert p.adopt({"p-2"}, 0) == [
        Recycle("p-2", "pool: running when the daemon started"),
        Start("p-1"),
    ]
    # Nothing warm yet: it waits, and a guest boots for it besides the two for size.
    assert p.arrival("192.0.2.1", 1) == [Start("p-3")]
    assert p.ready("p-2", 2) == [Map("192.0.2.1", "p-2"), Accept("192.0.2.1")]
