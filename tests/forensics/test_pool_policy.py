"""The pool's assignment policy (warden.forensics.poolpolicy), with scripted observations."""

from warden.forensics.poolpolicy import (
    MAX_WAITING,
    RETRY_AFTER,
    UNCONFIRMED_PER_NET,
    Forget,
    Map,
    Offer,
    PoolPolicy,
    Recycle,
    Release,
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
    p.confirmed({A, B}, 5)
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
        p.confirmed({f"10.0.0.{i}"}, 2)
    assert p.waiting_src(C, 3) == []  # every guest taken, none stopped: nothing to boot
    assert p.tick(13) == []
    assert p.tick(14) == [Forget(C)]
    # A guest freed within an address's wait goes to it.
    assert p.waiting_src(B, 58) == []
    p.seen({"10.0.0.1", "10.0.0.2"}, 58)
    assert p.tick(62) == [Unmap("10.0.0.0", "p-1"), Recycle("p-1", "pool: 10.0.0.0 idle 60s")]
    assert p.ready("p-1", 65) == [Map(B, "p-1")]
    p.confirmed({B}, 66)


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


def test_a_claim_without_a_handshake_is_released_unrecycled_and_offered_again() -> None:
    p = PoolPolicy(["p-1", "p-2"], size=2, idle=600, wait=10, claim_timeout=5)
    p.tick(0)
    p.ready("p-1", 1)
    p.ready("p-2", 1)
    # Spoofed SYNs took both guests: nobody at those addresses answers the SYN-ACK.
    p.claimed(A, "p-1", 2)
    assert p.claimed(B, "p-2", 2) == [Offer(())]
    assert p.tick(7) == []  # 5 s: not yet
    assert p.tick(7.5) == [
        Release(A, "p-1", f"pool: {A} sent no handshake"),
        Release(B, "p-2", f"pool: {B} sent no handshake"),
        Offer(("p-1", "p-2")),
    ]
    assert p.guest_of(A) is None and p.slot("p-1") is Slot.WARM
    # A real client's claim is confirmed by its handshake and kept until idle.
    p.claimed(C, "p-1", 8)
    p.confirmed({C}, 8.1)
    p.seen({C}, 8.1)
    assert p.tick(100) == [] and p.guest_of(C) == "p-1"
    p.confirmed({C}, 600)  # reported at every poll: a handshake once is not activity
    assert p.tick(608.1) == [Unmap(C, "p-1"), Recycle("p-1", f"pool: {C} idle 600s")]


def test_a_released_guest_goes_to_a_waiting_address_first() -> None:
    p = PoolPolicy(["p-1"], size=1, idle=600, wait=10, claim_timeout=3)
    p.tick(0)
    p.ready("p-1", 1)
    p.claimed(A, "p-1", 2)
    assert p.waiting_src(B, 2.5) == []  # no stopped guest left to boot for it
    assert p.tick(5.5) == [Release(A, "p-1", f"pool: {A} sent no handshake"), Map(B, "p-1")]
    assert p.offered == ()


def test_a_mapped_waiter_has_until_its_next_retransmission_to_confirm() -> None:
    p = PoolPolicy(["p-1"], size=0, idle=600, wait=20, claim_timeout=2)
    p.waiting_src(A, 0)
    assert p.ready("p-1", 6) == [Map(A, "p-1")]
    # Waited 6 s: its SYNs went at 0, 1, 3 and 7 s, then 15 s; it has 6 + 1 + 2 s to confirm.
    assert p.tick(15) == []
    assert p.tick(15.1) == [Release(A, "p-1", f"pool: {A} sent no handshake"), Offer(("p-1",))]


def test_unconfirmed_claims_per_24_are_bounded() -> None:
    guests = [f"p-{i}" for i in range(1, 6)]
    p = PoolPolicy(guests, size=5, idle=600, wait=10, claim_timeout=5)
    p.tick(0)
    for g in guests:
        p.ready(g, 1)
    for i in range(UNCONFIRMED_PER_NET):
        p.claimed(f"198.51.100.{i + 1}", guests[i], 2)
    n = UNCONFIRMED_PER_NET
    third = "198.51.100.200"
    assert p.claimed(third, guests[n], 2) == [
        Release(third, guests[n], f"pool: 198.51.100.0/24 has {n} unconfirmed")
    ]
    assert p.slot(guests[n]) is Slot.WARM and p.guest_of(third) is None
    # Another /24 is not held back, and a confirmed neighbour frees a place.
    assert p.claimed(C, guests[n], 2) == [Offer(tuple(guests[n + 1 :]))]
    assert p.guest_of(C) == guests[n]
    p.confirmed({"198.51.100.1"}, 2.2)
    assert p.claimed(third, guests[n + 1], 2.3) == [Offer(tuple(guests[n + 2 :]))]
    assert p.guest_of(third) == guests[n + 1]
