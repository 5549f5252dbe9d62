"""Placement and the leader's reconciliation, with scripted inputs (pure: no etcd)."""

from warden.cluster import reconcile as rc
from warden.cluster.keys import Assignment
from warden.cluster.placement import HostView, Load, Want, choose

M = 1 << 20


def hosts(*names: str, budget: int = 256 * M, **labels: dict[str, str]) -> list[HostView]:
    return [HostView(n, budget, labels.get(n, {})) for n in names]


def assigns(actions: list[rc.Action]) -> dict[str, str]:
    return {a.name: a.assignment.host for a in actions if isinstance(a, rc.Assign)}


def test_fewest_guests_wins_then_name() -> None:
    loads = {"a": Load(64 * M, 2), "b": Load(64 * M, 1), "c": Load(64 * M, 1)}
    host, _ = choose(Want("x", 64 * M), hosts("a", "b", "c"), loads)
    assert host == "b"


def test_memory_admission_per_host() -> None:
    loads = {"a": Load(200 * M, 1), "b": Load(0, 0)}
    host, _ = choose(Want("x", 100 * M), hosts("a", "b", budget=256 * M), loads)
    assert host == "b"
    host, why = choose(Want("x", 300 * M), hosts("a", "b", budget=256 * M), loads)
    assert host is None
    assert "b has 256M left of 256M, x needs 300M" in why


def test_host_and_label_constraints() -> None:
    hs = [HostView("a", 1 << 30, {"zone": "eu"}), HostView("b", 1 << 30, {"zone": "us"})]
    assert choose(Want("x", M, host="b"), hs, {})[0] == "b"
    assert choose(Want("x", M, labels=("zone=eu",)), hs, {})[0] == "a"
    host, why = choose(Want("x", M, labels=("zone=ap",)), hs, {})
    assert host is None and "lacks label zone=ap" in why


def test_spread_over_three_hosts_is_even_and_repeatable() -> None:
    desired = [Want(f"m{i}", 64 * M) for i in range(6)]
    first = assigns(rc.reconcile(desired, hosts("a", "b", "c"), {}))
    assert sorted(first.values()) == ["a", "a", "b", "b", "c", "c"]
    assert first == assigns(rc.reconcile(desired, hosts("a", "b", "c"), {}))


def test_more_than_fits_is_refused_with_the_reason() -> None:
    desired = [Want(f"m{i}", 100 * M) for i in range(3)]
    actions = rc.reconcile(desired, hosts("a", budget=256 * M), {})
    assert len(assigns(actions)) == 2
    refused = [a for a in actions if isinstance(a, rc.Refuse)]
    assert len(refused) == 1 and "not placed" in refused[0].why


def test_failover_places_a_dead_hosts_machines_on_the_living() -> None:
    desired = [Want("x", 64 * M), Want("y", 64 * M), Want("z", 64 * M)]
    assigned = {
        "x": Assignment("a", 1, "placed"),
        "y": Assignment("b", 1, "placed"),
        "z": Assignment("c", 1, "placed"),
    }
    actions = rc.reconcile(desired, hosts("a", "c"), assigned)  # b's lease expired
    [a] = [a for a in actions if isinstance(a, rc.Assign)]
    assert a.name == "y" and a.assignment == Assignment("a", 2, "failover")


def test_nothing_changes_when_all_is_in_place() -> None:
    desired = [Want("x", 64 * M)]
    assert rc.reconcile(desired, hosts("a", "b"), {"x": Assignment("b", 3, "placed")}) == []


def test_drain_moves_everything_off_and_places_nothing_there() -> None:
    hs = [HostView("a", 1 << 30, draining=True), HostView("b", 1 << 30)]
    assigned = {"x": Assignment("a", 1, "placed")}
    actions = rc.reconcile([Want("x", M), Want("new", M)], hs, assigned)
    assert assigns(actions) == {"x": "b", "new": "b"}
    assert (
        next(a for a in actions if isinstance(a, rc.Assign) and a.name == "x").assignment.why
        == "drain"
    )


def test_drain_with_no_room_elsewhere_leaves_the_machine() -> None:
    hs = [HostView("a", 1 << 30, draining=True), HostView("b", 32 * M)]
    actions = rc.reconcile([Want("x", 64 * M)], hs, {"x": Assignment("a", 1, "placed")})
    assert assigns(actions) == {}
    assert "stays on a" in next(a for a in actions if isinstance(a, rc.Refuse)).why


def test_move_request_honoured_or_refused() -> None:
    assigned = {"x": Assignment("a", 4, "placed")}
    actions = rc.reconcile([Want("x", M)], hosts("a", "b"), assigned, {"x": "b"})
    assert rc.Assign("x", Assignment("b", 5, "move")) in actions
    assert rc.Consume("x") in actions
    actions = rc.reconcile([Want("x", M)], hosts("a", "b"), assigned, {"x": "gone"})
    assert rc.Consume("x") in actions
    assert any(isinstance(a, rc.Refuse) and "gone is not alive" in a.why for a in actions)
    assert assigns(actions) == {}


def test_move_respects_the_target_budget() -> None:
    assigned = {"x": Assignment("a", 1, "placed"), "big": Assignment("b", 1, "placed")}
    hs = hosts("a", "b", budget=256 * M)
    actions = rc.reconcile([Want("x", 64 * M), Want("big", 250 * M)], hs, assigned, {"x": "b"})
    assert assigns(actions) == {}


def test_machine_removed_from_the_fleet_is_dropped() -> None:
    actions = rc.reconcile([], hosts("a"), {"old": Assignment("a", 1, "placed")})
    assert actions == [rc.Drop("old")]


def test_constraint_change_moves_the_machine() -> None:
    assigned = {"x": Assignment("a", 1, "placed")}
    actions = rc.reconcile([Want("x", M, host="b")], hosts("a", "b"), assigned)
    assert actions == [rc.Assign("x", Assignment("b", 2, "constraint"))]


def test_a_spread_group_goes_to_different_hosts_first() -> None:
    # h1 is the emptiest host, but it already has a sensor: the new sensor goes elsewhere.
    loads = {
        "a": Load(64 * M, 1, {"sensors": 1}),
        "b": Load(128 * M, 2, {}),
        "c": Load(128 * M, 2, {"sensors": 1}),
    }
    host, _ = choose(Want("s2", 64 * M, spread="sensors"), hosts("a", "b", "c"), loads)
    assert host == "b"
    # Without the group the fewest guests win, as always.
    assert choose(Want("x", 64 * M), hosts("a", "b", "c"), loads)[0] == "a"


def test_a_pool_spreads_over_every_host_before_doubling_up() -> None:
    desired = [Want(f"s{i}", 64 * M, spread="sensors") for i in range(3)]
    # h1 already runs two plain machines; the pool still takes one slot on it.
    assigned = {"p1": Assignment("a", 1, "placed"), "p2": Assignment("a", 1, "placed")}
    plain = [Want("p1", 32 * M), Want("p2", 32 * M)]
    placed = assigns(rc.reconcile(plain + desired, hosts("a", "b", "c"), assigned))
    assert sorted(placed.values()) == ["a", "b", "c"]
