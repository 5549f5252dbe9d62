"""The storage watch's policy, driven by scripted readings (no guests, no filesystem)."""

from collections.abc import Iterable

import pytest

from warden.sessionlog import quota
from warden.storage.policy import (
    FAST,
    MIN_WAIT,
    SLOW,
    WORST_RATE,
    FloorSetting,
    Reading,
    Watch,
)

MiB = 1 << 20
GiB = 1 << 30
SIZE = 100 * GiB  # the default floor there: 2 GiB


def reading(now: float, free: int, cows: dict[str, int], held: Iterable[str] = ()) -> Reading:
    return Reading(now, free, SIZE, cows, frozenset(held))


def test_the_default_floor_is_the_larger_of_1_gib_and_2_percent_at_most_an_eighth() -> None:
    assert FloorSetting().floor(SIZE) == 2 * GiB
    assert FloorSetting().floor(10 * GiB) == GiB
    assert FloorSetting().floor(1 * GiB) == GiB // 8
    assert FloorSetting(bytes=64 * MiB, percent=1).floor(SIZE) == GiB
    assert FloorSetting(bytes=64 * MiB).floor(SIZE) == 64 * MiB


def test_a_floor_must_leave_room_and_stay_above_the_logs_floor() -> None:
    size = 160 * MiB
    logs = quota.disk_floor(size, quota.Tier.OUTPUT)
    assert FloorSetting().problem(size, logs) is None
    half = FloorSetting(percent=50).problem(size, logs)
    assert half is None  # exactly half still leaves room
    too_big = FloorSetting(bytes=100 * MiB).problem(size, logs)
    assert too_big is not None and "more than half" in too_big and str(100 * MiB) in too_big
    too_low = FloorSetting(bytes=MiB).problem(size, logs)
    assert too_low is not None and "session logs' floor" in too_low


def test_plenty_of_space_pauses_nothing_and_reads_slowly() -> None:
    w = Watch()
    assert w.step(reading(0, 50 * GiB, {"a": 0, "b": 0})).wait == SLOW
    d = w.step(reading(2, 50 * GiB, {"a": 100 * MiB, "b": 0}))
    assert d.pause == () and d.resume == ()
    assert d.rates == {"a": 50 * MiB}
    assert FAST <= d.wait <= SLOW


def test_below_the_floor_the_growing_guests_are_paused_fastest_first() -> None:
    w = Watch()
    w.step(reading(0, 3 * GiB, {"slow": 0, "idle": 5 * MiB, "fast": 0}))
    # 1.5 GiB free, floor 2 GiB, reserve 1 GiB: 512 MiB of room for the next 10 s. slow's 60
    # MiB/s would use 600 MiB of it: it is paused too; idle is not.
    d = w.step(reading(1, GiB + GiB // 2, {"slow": 60 * MiB, "idle": 5 * MiB, "fast": 100 * MiB}))
    assert d.pause == ("fast", "slow")
    assert d.wait == FAST


def test_below_the_floor_a_trickling_guest_runs_on_until_the_reserve() -> None:
    w = Watch()
    w.step(reading(0, 3 * GiB, {"trickle": 0, "fast": 0}))
    d = w.step(reading(1, GiB + GiB // 2, {"trickle": 64 << 10, "fast": 100 * MiB}))
    assert d.pause == ("fast",)
    # Below the reserve (floor/2) every growing guest is paused.
    d = w.step(reading(2, GiB - 1, {"trickle": 128 << 10, "fast": 100 * MiB}))
    assert d.pause == ("trickle",)


def test_a_guest_first_seen_has_no_rate_yet() -> None:
    w = Watch()
    assert w.step(reading(0, GiB, {"new": 50 * MiB})).pause == ()
    assert w.step(reading(0.25, GiB, {"new": 60 * MiB})).pause == ("new",)


def test_above_the_floor_the_fastest_are_paused_when_the_rates_would_cross_it() -> None:
    w = Watch()
    w.step(reading(0, 2 * GiB + 100 * MiB, {"fast": 0, "slow": 0}))
    # 2 GiB + 50 MiB free, fast writes 400 MiB/s (100 MiB in a FAST interval): it would cross
    # the floor before the next reading; slow (4 MiB/s) would not.
    d = w.step(reading(0.125, 2 * GiB + 50 * MiB, {"fast": 50 * MiB, "slow": MiB // 2}))
    assert d.pause == ("fast",)


def test_held_guests_resume_only_above_the_floor_plus_the_hysteresis() -> None:
    w = Watch()
    floor = 2 * GiB
    d = w.step(reading(0, floor + 1, {"a": GiB}, held={"a"}))
    assert d.resume == () and d.pause == () and d.wait == FAST
    d = w.step(reading(1, floor + floor // 4 - 1, {"a": GiB}, held={"a"}))
    assert d.resume == ()
    d = w.step(reading(2, floor + floor // 4, {"a": GiB}, held={"a"}))
    assert d.resume == ("a",)
    assert d.resume_at == floor + floor // 4


def test_a_resumed_guest_is_measured_from_its_held_reading() -> None:
    """Its growth right after the resume counts: it is paused again at the next reading."""
    w = Watch()
    w.step(reading(0, 3 * GiB, {"a": GiB}, held={"a"}))
    d = w.step(reading(0.25, GiB, {"a": GiB + 200 * MiB}))
    assert d.pause == ("a",)


def test_a_held_guest_is_never_paused_again_and_nothing_resumes_while_pausing() -> None:
    w = Watch()
    w.step(reading(0, GiB, {"a": 0, "b": 0}, held={"a"}))
    d = w.step(reading(1, 3 * GiB, {"a": 0, "b": 0}, held={"a"}))
    assert d.pause == () and d.resume == ("a",)
    w2 = Watch()
    w2.step(reading(0, GiB, {"a": 0, "b": 0}, held={"a"}))
    d = w2.step(reading(1, GiB, {"a": 0, "b": MiB}, held={"a"}))
    assert d.pause == ("b",) and d.resume == ()


@pytest.mark.parametrize("rate_mib", [1, 10, 100])
def test_the_interval_leaves_four_intervals_of_room_at_the_measured_rate(rate_mib: int) -> None:
    w = Watch()
    w.step(reading(0, 20 * GiB, {"a": 0}))
    d = w.step(reading(1, 20 * GiB, {"a": rate_mib * MiB}))
    room = 20 * GiB - d.floor
    assert d.wait == min(SLOW, max(FAST, room / (rate_mib * MiB * 4)))
    # Within one interval the guest uses at most a quarter of the room above the floor.
    assert d.wait == SLOW or d.wait * rate_mib * MiB <= room / 4 + 1


def test_a_guest_that_writes_on_at_the_edge_waits_longer_each_time() -> None:
    """Paused, resumed, paused again at once: each resume waits twice as long (0.5, 1, 2 ... 8
    s), so a guest writing at the floor costs a pause and a resume every 8 s at most."""
    w = Watch()
    floor = 2 * GiB
    t, cow = 0.0, 0
    w.step(reading(t, floor + GiB, {"a": cow}))
    waits = []
    for _ in range(6):
        t += 0.25
        cow += 200 * MiB
        assert w.step(reading(t, floor - 1, {"a": cow})).pause == ("a",)
        paused_at = t
        while True:
            t += 0.25
            if w.step(reading(t, floor + floor // 2, {"a": cow}, held={"a"})).resume:
                break
        waits.append(t - paused_at)
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    # Ten seconds of running without a pause: the next pause waits no longer than the first.
    for _ in range(41):
        t += 0.25
        w.step(reading(t, floor + floor // 2, {"a": cow}))
    t += 0.25
    cow += 200 * MiB
    assert w.step(reading(t, floor - 1, {"a": cow})).pause == ("a",)
    t += 0.25
    assert w.step(reading(t, floor + floor // 2, {"a": cow}, held={"a"})).resume == ("a",)


@pytest.mark.parametrize("above_reserve_mib", [40, 76, 300, 900])
def test_a_guest_starting_at_full_speed_after_a_quiet_reading_cannot_reach_the_reserve(
    above_reserve_mib: int,
) -> None:
    """CI: a home with 60 MiB above a 32 MiB floor read every 2 s (nothing grew), and a guest
    then wrote 220 MB/s: the disk was full before the next reading."""
    setting = FloorSetting(bytes=32 * MiB)
    w = Watch(setting)
    size = 176 * MiB
    free = setting.floor(size) // 2 + above_reserve_mib * MiB
    d = w.step(Reading(0, free, size, {"a": 0}, frozenset()))
    assert MIN_WAIT <= d.wait <= SLOW
    # At WORST_RATE from the instant of the reading, half the room is left at the next one.
    assert d.wait * WORST_RATE <= above_reserve_mib * MiB / 2 or d.wait == MIN_WAIT


def test_far_above_the_floor_the_unseen_writer_costs_no_extra_readings() -> None:
    w = Watch()
    assert w.step(reading(0, 20 * GiB, {"a": 0})).wait == SLOW
