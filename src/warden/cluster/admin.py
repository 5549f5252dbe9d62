"""What `warden --cluster URL ...` does: writes the desired fleet, drains and moves, and reads
the cluster's state for `ls` and `hosts`. It never writes an assignment or an owner record
(the leader and the hosts do: docs/formats/cluster.md)."""

from typing import Any

from warden.cluster import keys
from warden.cluster.agent import read_view
from warden.cluster.etcd import Etcd
from warden.errors import NotFound, SpecError
from warden.spec import fleet as fleetmod


async def apply(etcd: Etcd, text: str, source: str) -> dict[str, Any]:
    fleet = fleetmod.parse(text, source)  # refused here, before anything is written
    if fleet.cluster.storage:
        named = [m.name for m in fleet.machines if "/" not in m.image]
        if named:
            raise SpecError(
                f"{source}: [cluster] storage is set, so every machine's image must be a path "
                f"every host reaches; {', '.join(named)} name an image instead"
            )
    old = await etcd.get(keys.FLEET)
    before = set()
    if old is not None:
        before = {m.name for m in fleetmod.parse(keys.fleet_from_bytes(old.value)[0]).machines}
    await etcd.put(keys.FLEET, keys.encode({"text": text, "source": source}))
    now = {m.name for m in fleet.machines}
    return {"added": sorted(now - before), "removed": sorted(before - now)}


async def machines(etcd: Etcd) -> list[dict[str, Any]]:
    view = read_view(await etcd.prefix(keys.PREFIX))
    if view.fleet_text is None:
        return []
    fleet = fleetmod.parse(view.fleet_text, view.fleet_source)
    out = []
    for m in fleet.machines:
        a = view.assigned.get(m.name)
        owner = view.owners.get(m.name)
        if owner is not None:
            state, host = owner[0].state, owner[0].host
        elif a is None:
            state, host = "unplaced", None
        else:
            state, host = "pending", None
        out.append(
            {
                "name": m.name,
                "state": state,
                "owner": m.owner,
                "host": host,
                "assigned": a.host if a is not None else None,
                "rev": a.rev if a is not None else 0,
                "why": a.why if a is not None else None,
                "memory": m.memory,
            }
        )
    return out


async def hosts(etcd: Etcd) -> list[dict[str, Any]]:
    view = read_view(await etcd.prefix(keys.PREFIX))
    names = set(view.hosts) | view.known | {a.host for a in view.assigned.values()}
    out = []
    for name in sorted(names):
        h = view.hosts.get(name)
        running = sorted(n for n, (o, _) in view.owners.items() if o.host == name)
        out.append(
            {
                "name": name,
                "alive": h is not None,
                "budget": h.budget if h is not None else None,
                "free": h.free if h is not None else None,
                "labels": h.labels if h is not None else {},
                "draining": name in view.drains,
                "leader": view.leader == name,
                "machines": running,
                "assigned": sorted(n for n, a in view.assigned.items() if a.host == name),
            }
        )
    return out


async def drain(etcd: Etcd, host: str, undo: bool = False) -> None:
    keys.check_host_name(host)
    if undo:
        await etcd.delete(keys.DRAIN + host)
    else:
        await etcd.put(keys.DRAIN + host, b"{}")


async def move(etcd: Etcd, name: str, host: str) -> None:
    keys.check_host_name(host)
    view = read_view(await etcd.prefix(keys.PREFIX))
    if view.fleet_text is None or fleetmod.parse(view.fleet_text).machine(name) is None:
        raise NotFound(f"no machine named {name!r} in the cluster's fleet")
    if host not in view.hosts:
        raise NotFound(f"no alive host named {host!r} (warden --cluster URL hosts lists them)")
    await etcd.put(keys.MOVE + name, keys.encode({"host": host}))
