"""The pool's assignment policy (warden.forensics.poolpolicy), with scripted observations."""

from warden.forensics.poolpolicy import (
    MAX_WAITING,
    RETRY_AFTER,
    Forget,
    Map,
    Offer,
    PoolPolicy,
    Recycle,
    Slot,
    Start,
    Unmap,
)

GUESTS = ["p-1", "p-2", "p-3"]
A, B, C = "198.51.100.7", "203.0.113.9", "192.0.2.1"


def warm_pool(size: int = 2, idle: float = 60, wait: float = 10) -> PoolPolicy:
    p = PoolPolicy(list(GUESTS), size=size, idle=idle, wait=wait)
    assert p.tick(0) == [Start(g) for g in GUESTS[:size]]
    for g in GUESTS[:size]:
        p.ready(g, 1)
    assert p.offered == tuple(GUESTS[:size])
    return p


def test_the_refill_starts_size_guests_and_offers_each_once_warm() -> None:
    p = PoolPolicy(list(GUESTS), size=2, idle=60, wait=10)
    assert p.tick(0) == [Start("p-1"), Start("p-2")]
    assert p.tick(1) == []  # booting ones count
    assert p.ready("p-2", 2) == [Offer(("p-2",))]
    assert p.ready("p-1", 3) == [Offer(("p-1", "p-2"))]
    assert p.ready("p-1", 4) == []  # told twice


def test_two_addresses_get_two_guests_and_a_repeat_keeps_its_own() -> None:
    p = warm_pool()
    # The kernel gave p-1 to A: p-1 is no longer offered, and p-3 boots to keep two.
    assert p.claimed(A, "p-1", 5) == [Start("p-3"), Offer(("p-2",))]
    assert p.claimed(B, "p-2", 5) == [Offer(())]
    assert p.claimed(A, "p-1", 6) == []  # the same claim, reported again
    assert p.guest_of(A) == "p-1" and p.guest_of(B) == "p-2"
    assert p.ready("p-3", 7) == [Offer(("p-3",))]


def test_one_address_claiming_two_guests_gives_one_back() -> None:
    p = warm_pool()
    p.claimed(A, "p-1", 5)
    # A second SYN on another CPU claimed p-2 too. The kernel's DNAT takes the first map in
    # guest order that holds A (p-1), so p-2 saw nothing: it is freed and stays offered.
    assert p.claimed(A, "p-2", 5) == [Unmap(A, "p-2")]
    assert p.count(Slot.WARM) == 1 and p.guest_of(A) == "p-1"


def test_a_claim_of_a_guest_not_offered_is_undone_and_the_guest_recycled() -> None:
    p = warm_pool()
    p.claimed(A, "p-1", 5)
    assert p.claimed(B, "p-1", 6) == [
        Unmap(B, "p-1"),
        Recycle("p-1", f"pool: claimed by {B} unoffered"),
    ]


def test_idle_recycle_order_and_reason() -> None:
    p = warm_pool(idle=60)
    p.claimed(A, "p-1", 5)
    p.claimed(B, "p-2", 5)
    p.seen({B}, 50)
    assert p.tick(64) == []  # A idle 59 s
    assert p.tick(65) == [Unmap(A, "p-1"), Recycle("p-1", f"pool: {A} idle 60s")]
    assert p.guest_of(A) is None and p.slot("p-1") is Slot.BOOTING
    assert p.tick(109) == []  # B seen at 50
    assert p.tick(110) == [Unmap(B, "p-2"), Recycle("p-2", f"pool: {B} idle 60s")]
    assert p.ready("p-1", 111) == [Offer(("p-1",))]  # pristine again, for anyone


def test_an_empty_pool_boots_a_guest_for_a_waiting_address_and_maps_it() -> None:
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=10)
    assert p.tick(0) == []
    assert p.waiting_src(A, 1) == [Start("p-1")]
    assert p.waiting_src(A, 2) == []  # its retransmitted SYN, dropped too: nothing new
    # Mapped at once, never offered: its next SYN reaches p-1, nobody else can take it.
    assert p.ready("p-1", 4) == [Map(A, "p-1")]
    assert p.guest_of(A) == "p-1" and p.offered == ()


def test_an_exhausted_pool_lets_an_address_wait_up_to_wait() -> None:
    p = warm_pool(size=3, wait=10)
    p.ready("p-3", 1)
    for i, g in enumerate(GUESTS):
        p.claimed(f"10.0.0.{i}", g, 2)
    assert p.waiting_src(C, 3) == []  # every guest taken, none stopped: nothing to boot
    assert p.tick(13) == []
    assert p.tick(14) == [Forget(C)]
    # A guest freed within an address's wait goes to it.
    assert p.waiting_src(B, 58) == []
    p.seen({"10.0.0.1", "10.0.0.2"}, 58)
    assert p.tick(62) == [Unmap("10.0.0.0", "p-1"), Recycle("p-1", "pool: 10.0.0.0 idle 60s")]
    assert p.ready("p-1", 65) == [Map(B, "p-1")]


def test_a_waiter_past_its_deadline_is_forgotten_when_a_guest_comes() -> None:
    p = PoolPolicy(["p-1"], size=0, idle=60, wait=5)
    p.waiting_src(A, 0)
    p.waiting_src(B, 4)
    assert p.ready("p-1", 7) == [Forget(A), Map(B, "p-1")]


def test_a_claim_ends_a_wait() -> None:
    p = PoolPolicy(list(GUESTS), size=1, idle=60, wait=10)
    p.tick(0)
    p.waiting_src(A, 1)  # p-1 boots for size, p-2 for A
    p.ready("p-1", 2)  # A waits first: mapped to A
    assert p.guest_of(A) == "p-1"
    p.waiting_src(B, 3)
    assert p.ready("p-2", 4) == [Map(B, "p-2")]


def test_wait_zero_and_the_bound_on_waiters() -> None:
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=0)
    assert p.waiting_src(A, 0) == [] and p.count(Slot.BOOTING) == 0
    p = PoolPolicy(list(GUESTS), size=0, idle=60, wait=10)
    for i in range(MAX_WAITING):
        p.waiting_src(f"10.1.{i // 250}.{i % 250}", 0)
    assert p.count(Slot.BOOTING) == 3  # one per waiter while stopped guests last
    assert p.waiting_src(C, 0) == [] and C not in p.waiting


def test_a_failed_guest_is_taken_back_and_retried_later() -> None:
    p = warm_pool(size=1)
    assert p.claimed(A, "p-1", 2) == [Start("p-2"), Offer(())]
    assert p.failed("p-1", 3) == [Unmap(A, "p-1")]  # p-2 already boots for the refill
    assert p.guest_of(A) is None and p.slot("p-1") is Slot.OFF
    assert p.failed("p-2", 4) == [Start("p-3")]  # p-1 and p-2 wait out RETRY_AFTER
    assert p.failed("p-3", 6) == []
    assert p.tick(4 + RETRY_AFTER) == [Start("p-1")]


def test_warm_guests_that_fail_are_no_longer_offered() -> None:
    p = warm_pool()
    assert p.failed("p-2", 2) == [Start("p-3"), Offer(("p-1",))]


def test_guests_running_at_start_are_recycled_before_use() -> None:
    p = PoolPolicy(list(GUESTS), size=2, idle=60, wait=10)
    assert p.adopt({"p-2"}, 0) == [
        Recycle("p-2", "pool: running when the daemon started"),
        Start("p-1"),
    ]
    assert p.offered == ()
    assert p.ready("p-2", 2) == [Offer(("p-2",))]
