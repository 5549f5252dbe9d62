"""Boot admission (daemon/admission.py) with scripted boots and loads: no I/O."""

import pytest

from warden.daemon.admission import Admission, Settings


def test_boots_beyond_the_limit_wait_their_turn_in_order() -> None:
    a = Admission(cpus=2)  # per_cpu 2: 4 slots
    assert a.limit == 4
    assert [a.request(f"g{i}", now=float(i)) for i in range(7)] == [True] * 4 + [False] * 3
    assert a.queued() == ["g4", "g5", "g6"]
    assert a.position("g5") == 2 and a.position("g0") is None
    assert a.reason("g5").startswith("boot queued: 2 of 3 waiting, 4 booting (limit 4 for 2 CPUs")
    assert a.reason("g0") == ""
    assert a.done("g1") == ["g4"]
    assert a.done("g6") == []  # called off while it waited: its place is gone, no slot freed
    assert a.queued() == ["g5"]
    assert a.done("g0") == ["g5"] and a.queued() == []
    assert a.booting == 4


def test_a_new_boot_does_not_overtake_the_queue() -> None:
    a = Admission(cpus=1, settings=Settings(per_cpu=1))
    assert a.request("a", 0) and not a.request("b", 0)
    a.observe(0.0)
    assert a.done("a") == ["b"]
    assert not a.request("c", 0)  # b holds the only slot


def test_requests_are_idempotent_for_a_boot_already_admitted() -> None:
    a = Admission(cpus=1, settings=Settings(per_cpu=1))
    assert a.request("a", 0) and a.request("a", 1)
    assert a.booting == 1


def test_other_work_on_the_host_lowers_the_limit_one_slot_at_a_time() -> None:
    a = Admission(cpus=2, settings=Settings(per_cpu=2, smoothing=1.0))
    assert a.limit == 4
    a.observe(1.0)  # one CPU busy with other work: target 2
    assert a.limit == 3
    a.observe(1.0)
    assert a.limit == 2
    a.observe(1.0)
    assert a.limit == 2
    a.observe(2.0)  # both busy: the floor, one boot at a time
    a.observe(2.0)
    assert a.limit == 1
    a.observe(5.0)  # a reading above the host's CPUs counts as all of them
    assert a.limit == 1 and a.other == 2.0
    for _ in range(3):
        a.observe(0.0)
    assert a.limit == 4  # idle again: back to the ceiling, one slot per interval


def test_a_raised_limit_admits_the_waiting_boots() -> None:
    a = Admission(cpus=2, settings=Settings(per_cpu=1, smoothing=1.0), limit=1)
    assert a.request("a", 0)
    assert not a.request("b", 0) and not a.request("c", 0)
    assert a.observe(0.0) == ["b"]  # limit 1 -> 2
    assert a.observe(0.0) == []  # at the ceiling (2): c waits for a slot
    assert a.done("a") == ["c"]


def test_smoothing_keeps_one_burst_from_emptying_the_pipeline() -> None:
    a = Admission(cpus=2, settings=Settings(per_cpu=2, smoothing=0.5))
    a.observe(2.0)  # smoothed 1.0: target 2, the limit moves by one
    assert a.limit == 3 and a.other == pytest.approx(1.0)
    a.observe(0.0)  # 0.5: target 3
    assert a.limit == 3


def test_at_least_one_cpu() -> None:
    with pytest.raises(ValueError):
        Admission(cpus=0)


def test_a_fixed_number_of_slots_is_kept_whatever_the_load() -> None:
    a = Admission(cpus=2, settings=Settings(per_cpu=2, smoothing=1.0))
    assert a.set_fixed(1) == [] and a.limit == 1
    assert a.request("a", 0) and not a.request("b", 0)
    a.observe(0.0)
    assert a.limit == 1 and a.queued() == ["b"]
    assert a.set_fixed(1000) == ["b"] and a.limit == 1000
    a.observe(2.0)
    assert a.limit == 1000
    a.set_fixed(0)  # automatic again: from the ceiling
    assert a.limit == 4


def test_a_boot_keeps_its_slot_after_up_until_its_cpu_use_settles() -> None:
    a = Admission(cpus=1, settings=Settings(per_cpu=1, settled_cpu=0.1, settle_max=15))
    assert a.request("a", 0) and not a.request("b", 0)
    a.up("a", now=1.0)
    assert a.settling() == ["a"]
    assert a.observe(0.0, {"a": 0.8}, now=2.0) == []  # init still runs: b waits
    assert a.observe(0.0, {}, now=3.0) == []  # no reading: it keeps the slot
    assert a.observe(0.0, {"a": 0.05}, now=4.0) == ["b"]  # settled
    assert a.settling() == [] and a.booting == 1
    a.up("b", now=5.0)
    assert a.observe(0.0, {"b": 0.9}, now=19.9) == [] and a.booting == 1
    assert a.observe(0.0, {"b": 0.9}, now=20.0) == [] and a.booting == 0  # settle_max
    a.up("ghost", now=21.0)  # never admitted (a reboot's second "up"): nothing to hold
    assert a.settling() == []


def test_a_boot_that_ends_while_settling_gives_its_slot_back() -> None:
    a = Admission(cpus=1, settings=Settings(per_cpu=1))
    assert a.request("a", 0) and not a.request("b", 0)
    a.up("a", now=1.0)
    assert a.done("a") == ["b"] and a.settling() == []
