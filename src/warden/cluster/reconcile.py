"""The leader's decisions: desired fleet x assignments x alive hosts -> assignment changes.

Pure: the driver (warden.cluster.agent) reads etcd, calls `reconcile`, writes what it returns.
It never waits for a dead host's guests to be gone: the host that gets a machine waits for the
owner record (docs/formats/cluster.md), so the leader can move an assignment at once.

Rules, in this order, each machine once:
- an assignment for a machine the fleet no longer has is dropped;
- a move request (`warden --cluster URL move NAME HOST`) is honoured if HOST is alive and
  admits NAME, else refused with the reason (the request is consumed either way);
- a machine whose host is gone (its lease expired) is placed again: `failover`;
- a machine on a draining host, or on a host its `host`/`host_labels` no longer allow, is
  placed again: `drain`, `constraint` (it stays where it is when no host takes it);
- a machine with no assignment is placed: `placed`.
Machines are placed largest first (first-fit decreasing), then by name: the same inputs give
the same assignments.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from warden.cluster import placement as pl
from warden.cluster.keys import Assignment
from warden.cluster.placement import HostView, Load, Want


@dataclass(frozen=True)
class Assign:
    name: str
    assignment: Assignment


@dataclass(frozen=True)
class Drop:
    name: str


@dataclass(frozen=True)
class Refuse:
    """A machine left where it is (or unplaced), or a move refused: an event, no change."""

    name: str
    why: str


@dataclass(frozen=True)
class Consume:
    """The move request of `name` is done with."""

    name: str


Action = Assign | Drop | Refuse | Consume


def reconcile(
    desired: Sequence[Want],
    hosts: Sequence[HostView],
    assigned: Mapping[str, Assignment],
    moves: Mapping[str, str] | None = None,
) -> list[Action]:
    moves = moves or {}
    alive = {h.name: h for h in hosts}
    wants = {w.name: w for w in desired}
    actions: list[Action] = []
    for name in sorted(set(assigned) - set(wants)):
        actions.append(Drop(name))
    for name in sorted(set(moves) - set(wants)):
        actions.append(Refuse(name, f"move: no machine named {name} in the fleet"))
        actions.append(Consume(name))

    # The load of every alive host from the assignments that stay.
    loads: dict[str, Load] = {}
    for name, a in assigned.items():
        if name in wants and a.host in alive:
            pl.add(loads, a.host, wants[name])

    order = sorted(wants.values(), key=lambda w: (-w.memory, w.name))
    for want in order:
        current = assigned.get(want.name)
        rev = current.rev + 1 if current is not None else 1
        target = moves.get(want.name)
        if target is not None:
            actions.append(Consume(want.name))
            moved = _move(want, target, current, alive, loads)
            if isinstance(moved, str):
                actions.append(Refuse(want.name, f"move to {target}: {moved}"))
            else:
                actions.append(Assign(want.name, Assignment(target, rev, "move")))
                continue
        if current is None or current.host not in alive:
            why = "placed" if current is None else "failover"
            host, reason = pl.choose(want, hosts, loads)
            if host is None:
                actions.append(Refuse(want.name, f"not placed: {reason}"))
                continue
            pl.add(loads, host, want)
            actions.append(Assign(want.name, Assignment(host, rev, why)))
            continue
        here = alive[current.host]
        problem = pl.fits(want, here)
        if problem is None:
            continue
        why = "drain" if here.draining else "constraint"
        pl.remove(loads, here.name, want)
        host, reason = pl.choose(want, hosts, loads, exclude=here.name)
        if host is None:
            pl.add(loads, here.name, want)
            actions.append(Refuse(want.name, f"stays on {here.name} ({problem}): {reason}"))
            continue
        pl.add(loads, host, want)
        actions.append(Assign(want.name, Assignment(host, rev, why)))
    return actions


def _move(
    want: Want,
    target: str,
    current: Assignment | None,
    alive: Mapping[str, HostView],
    loads: dict[str, Load],
) -> str | None:
    """None if `want` may move to `target` (loads updated); else why not."""
    host = alive.get(target)
    if host is None:
        return f"host {target} is not alive"
    if current is not None and current.host == target:
        return f"it is already assigned to {target}"
    problem = pl.fits(want, host)
    if problem is not None:
        return problem
    if not pl.admits(want, host, loads.get(target, Load())):
        return f"{target} has not {want.memory >> 20}M left"
    if current is not None and current.host in alive:
        pl.remove(loads, current.host, want)
    pl.add(loads, target, want)
    return None
