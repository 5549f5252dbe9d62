"""Claim: the cluster's leader re-places a dead host's guests in a small part of the lease TTL.

Simulated, with a real etcd (one member, Debian's 3.4, on a loopback port) and no guests:
50 hosts (their records under leases) and 5,000 machines of 64M. Measured: the leader's
placement of all 5,000 (warden.cluster.reconcile, pure) and its writes (one put per
assignment, as warden.cluster.agent does), then one host's lease lost (its record revoked)
and its ~100 guests placed again: from the round's read of the prefix to the last assignment
written. Also: etcd requests per second the writes needed, and what one host's round costs
(the read of the whole prefix every 0.5 s that each host makes). Anchor: the default lease
TTL (10 s): a failover takes TTL + grace + a boot; the leader's part should be under a tenth
of the TTL.

Not simulated here (listed in docs/decisions/2026-12-07-cluster.md): 50 daemons with a fake
launcher, and so the daemon's memory per host.
"""

import asyncio
import os
import time

from _common import result
from tests.support.etcd import EtcdCluster
from warden.cluster import keys
from warden.cluster import reconcile as rc
from warden.cluster.agent import read_view, wants
from warden.cluster.etcd import Etcd
from warden.cluster.keys import HostInfo
from warden.cluster.placement import HostView
from warden.spec import fleet as fleetmod

HOSTS = int(os.environ.get("CLUSTER_HOSTS", "50"))
MACHINES = int(os.environ.get("CLUSTER_MACHINES", "5000"))
TTL = 10


def fleet_text() -> str:
    parts = ['[[owner]]\nname = "bench"\n']
    for i in range(MACHINES):
        parts.append(f'[[machine]]\nname = "m{i:05d}"\nowner = "bench"\nmemory = "64M"\n')
    return "\n".join(parts)


async def lead_round(etcd: Etcd, fleet: fleetmod.Fleet) -> tuple[int, float, float]:
    """One leader round: read, decide, write. (assignments written, read+decide s, total s)"""
    t0 = time.monotonic()
    view = read_view(await etcd.prefix(keys.PREFIX))
    hosts = [HostView(h.name, h.budget, h.labels) for h in view.hosts.values()]
    actions = rc.reconcile(wants(fleet), hosts, view.assigned, view.moves)
    t1 = time.monotonic()
    n = 0
    for a in actions:
        if isinstance(a, rc.Assign):
            await etcd.put(keys.ASSIGN + a.name, a.assignment.to_bytes())
            n += 1
    return n, t1 - t0, time.monotonic() - t0


async def main() -> None:
    e = EtcdCluster(members=1)
    e.start_all()
    etcd = Etcd(e.urls, timeout=30)
    try:
        text = fleet_text()
        fleet = fleetmod.parse(text, "bench.toml")
        await etcd.put(keys.FLEET, keys.encode({"text": text, "source": "bench.toml"}))
        leases = {}
        for i in range(HOSTS):
            name = f"host{i:02d}"
            leases[name] = await etcd.grant(TTL * 100)
            info = HostInfo(name, budget=16 << 30, free=16 << 30, ttl=TTL)
            await etcd.put(keys.HOSTS + name, info.to_bytes(), lease=leases[name])
        before = etcd.requests
        n, decide, total = await lead_round(etcd, fleet)
        reqs = etcd.requests - before
        print(
            f"placed {n} machines on {HOSTS} hosts: decide {decide:.2f}s (read + reconcile), "
            f"with the writes {total:.2f}s, {reqs / total:.0f} etcd requests/s"
        )
        t = time.monotonic()
        entries = await etcd.prefix(keys.PREFIX)
        read = time.monotonic() - t
        size = sum(len(v.value) + len(k) for k, v in entries.items())
        print(
            f"one host's round reads {len(entries)} keys, {size / 1e6:.2f} MB, in {read:.3f}s "
            f"(x {HOSTS} hosts every 0.5 s: {HOSTS * size / 0.5 / 1e6:.0f} MB/s from etcd)"
        )
        dead = "host07"
        await etcd.revoke(leases[dead])
        before = etcd.requests
        n2, decide2, total2 = await lead_round(etcd, fleet)
        print(
            f"host {dead} lost: {n2} machines placed again in {total2:.2f}s "
            f"(decide {decide2:.2f}s, {etcd.requests - before} requests)"
        )
        result(
            f"cluster: leader re-places a dead host's {n2} guests (of {MACHINES} on {HOSTS} hosts)",
            total2,
            float(TTL),
            "<= 0.1 x the lease TTL",
            "s",
            anchor_name="lease TTL (default)",
            ok=total2 <= 0.1 * TTL,
        )
    finally:
        await etcd.close()
        e.close()


if __name__ == "__main__":
    asyncio.run(main())
