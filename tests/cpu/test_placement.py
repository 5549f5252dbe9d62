"""The placement policy with scripted loads (warden.cpu.placement): no I/O, no guests."""

import pytest

from warden.cpu.placement import Placement, Settings
from warden.host.cpuset import CpusetError, busy_per_cpu, format_list, parse_list


def settled(p: Placement, loads: dict[str, float], rounds: int = 6) -> list[str]:
    """Feed the same loads for a few intervals; every move made, as 'name:from->to'."""
    out = []
    for _ in range(rounds):
        out += [f"{mv.name}:{mv.cpu_from}->{mv.cpu_to}" for mv in p.observe(loads)]
    return out


def test_new_guests_spread_evenly_over_the_cpus() -> None:
    p = Placement((0, 1))
    where = [p.place(f"g{i}")[0] for i in range(6)]
    assert where == [0, 1, 0, 1, 0, 1]


def test_a_new_guest_goes_where_the_measured_load_is_lowest() -> None:
    p = Placement((0, 1, 2))
    for n in ("a", "b", "c"):
        p.place(n)
    p.observe({"a": 0.9, "b": 0.05, "c": 0.02})  # a on 0, b on 1, c on 2
    assert p.place("d") == (2,)
    # d is booting (counted at boot_load) until it is measured: the next goes to 1
    assert p.place("e") == (1,)


def test_the_hosts_other_work_counts() -> None:
    p = Placement((0, 1))
    p.observe({}, other={0: 0.1, 1: 0.8})
    assert p.place("a") == (0,)


def test_a_pinned_guest_gets_its_pin_and_never_moves() -> None:
    p = Placement((0, 1), Settings(cooldown=0))
    assert p.place("a", (1,)) == (1,)
    assert p.place("b", (1,)) == (1,)
    assert settled(p, {"a": 1.0, "b": 1.0}) == []
    assert p.where("a") == (1,)
    assert p.place("c", (0, 1)) == (0, 1)  # a list: the guest's cpuset is the list


def test_a_busy_guest_leaves_a_contended_cpu_once() -> None:
    p = Placement((0, 1), Settings(cooldown=2))
    for n in ("a", "b", "c", "d"):
        p.place(n)  # a, c on 0; b, d on 1
    # a and c busy on 0, b and d idle on 1: one of them moves, then it stays
    moves = settled(p, {"a": 1.0, "c": 0.9, "b": 0.0, "d": 0.0}, rounds=10)
    assert moves == ["c:0->1"]  # the move that leaves the lower maximum (0.9 away)
    assert p.loads()[0] == pytest.approx(1.0) and p.loads()[1] == pytest.approx(0.9)


def test_no_move_when_it_would_only_swap_the_overloaded_cpu() -> None:
    p = Placement((0, 1), Settings(cooldown=0))
    p.place("a")  # 0
    p.place("b")  # 1
    p.place("idle")  # 0
    # 0 has 1.0 + 0.05, 1 has 0.8: moving a would make 1 carry 1.8
    assert settled(p, {"a": 1.0, "b": 0.8, "idle": 0.05}) == []


def test_guests_that_are_not_busy_are_not_moved() -> None:
    p = Placement((0, 1), Settings(cooldown=0))
    names = [f"g{i}" for i in range(20)]
    for n in names:
        p.place(n, (0,))  # all on 0 ...
    for n in names:
        p.adopt(n, (0,), pinned=False)  # ... as a restarted daemon finds them, unpinned
    assert settled(p, dict.fromkeys(names, 0.06)) == []  # 1.2 on CPU 0, but no one is busy


def test_moves_are_bounded_per_interval_and_wait_for_the_cooldown() -> None:
    p = Placement((0, 1, 2, 3), Settings(cooldown=3, max_moves=1))
    for n in ("a", "b", "c", "d"):
        p.adopt(n, (0,), pinned=False)
    first = p.observe(dict.fromkeys("abcd", 1.0))
    assert len(first) == 1
    second = p.observe(dict.fromkeys("abcd", 1.0))
    assert len(second) == 1 and second[0].name != first[0].name
    # the moved ones wait out their cooldown; the third moves in the third interval
    assert len(p.observe(dict.fromkeys("abcd", 1.0))) == 1
    assert sorted(p.loads().values()) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert settled(p, dict.fromkeys("abcd", 1.0)) == []


def test_a_guest_just_placed_is_not_moved_before_its_cooldown() -> None:
    p = Placement((0, 1), Settings(cooldown=3))
    p.place("a", ())
    p.place("x", (0,))
    p.place("b", ())  # a on 0, b on 1 ... b measured idle, a busy with x
    p.observe({"a": 1.0, "x": 1.0, "b": 0.0})
    p.observe({"a": 1.0, "x": 1.0, "b": 0.0})
    assert p.where("a") == (0,)
    moves = p.observe({"a": 1.0, "x": 1.0, "b": 0.0})
    assert [mv.name for mv in moves] == ["a"] and p.where("a") == (1,)


def test_loads_are_smoothed_so_one_spike_moves_nothing() -> None:
    p = Placement((0, 1), Settings(cooldown=0, smoothing=0.5))
    p.adopt("a", (0,), pinned=False)
    p.adopt("b", (0,), pinned=False)
    p.observe({"a": 0.1, "b": 0.1})
    # one interval of 1.6 on CPU 0 reads as 0.55 + 0.35 = 0.9: not above `contended`
    assert p.observe({"a": 1.0, "b": 0.6}) == []
    assert p.observe({"a": 0.1, "b": 0.1}) == []
    p2 = Placement((0, 1), Settings(cooldown=0, smoothing=0.5))
    p2.adopt("a", (0,), pinned=False)
    p2.adopt("b", (0,), pinned=False)
    p2.observe({"a": 0.1, "b": 0.1})
    p2.observe({"a": 1.0, "b": 0.6})
    # it lasts: 0.775 + 0.475, and moving a leaves 0.775 at most
    assert [mv.name for mv in p2.observe({"a": 1.0, "b": 0.6})] == ["a"]


def test_one_busy_guest_alone_on_its_cpu_stays() -> None:
    p = Placement((0, 1), Settings(cooldown=0))
    p.adopt("a", (0,), pinned=False)
    p.adopt("idle", (0,), pinned=False)
    p.adopt("b", (1,), pinned=False)
    # 1.1 on CPU 0, but moving a (or idle) lowers nothing by the margin
    assert settled(p, {"a": 1.0, "idle": 0.1, "b": 0.2}) == []


def test_release_frees_the_cpu() -> None:
    p = Placement((0, 1))
    assert p.place("a") == (0,)
    p.release("a")
    assert p.place("b") == (0,)
    assert p.where("a") is None


def test_cpu_lists_in_the_kernels_format() -> None:
    assert parse_list("0-2,5\n") == (0, 1, 2, 5)
    assert parse_list("") == ()
    assert format_list((5, 0, 1, 2)) == "0-2,5"
    assert format_list([1]) == "1"
    assert format_list((0, 2, 3)) == "0,2-3"
    for bad in ("0-", "a", "3-1", "0,,1", "99999"):
        with pytest.raises(CpusetError):
            parse_list(bad)


def test_busy_time_per_cpu_from_proc_stat() -> None:
    text = (
        "cpu  10 0 10 100 5 0 0 0 0 0\n"
        "cpu0 7 1 3 50 2 1 1 0 0 0\n"
        "cpu1 3 0 7 50 3 0 0 1 0 0\n"
        "intr 1 2 3\n"
    )
    assert busy_per_cpu(text) == {0: 13, 1: 11}
