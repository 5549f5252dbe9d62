"""What `warden net ls` shows (GET /v1/net), built from the fleet, state.json and the links the
helper reports (pure)."""

from collections.abc import Mapping
from typing import Any

from warden.net import names
from warden.net.plan import NetPlan
from warden.net.state import State
from warden.spec.fleet import Fleet


def status(
    instance: str,
    fleet: Fleet,
    state: State,
    stats: Mapping[str, dict[str, Any]],
    machine_states: Mapping[str, str],
    macs: Mapping[str, list[str]],
    br_netfilter: bool | None,
    error: str,
) -> dict[str, Any]:
    """`stats`: the helper's links by name ({} when it is not running); `machine_states`:
    each machine's state by name (a machine missing from it is "absent"); `macs`: each
    machine's NICs' MACs (names.mac, or its persona's: warden.persona)."""
    networks = []
    for n in fleet.networks:
        p = NetPlan.of(n)
        dns = state.procs.get(f"dns:{n.name}")
        networks.append(
            {
                "name": n.name,
                "subnet": n.subnet,
                "gateway": p.gateway,
                "nat": n.nat,
                "bridge": p.bridge,
                "up": n.name in state.networks and p.bridge in stats,
                "dnsmasq": dns["pid"] if dns else None,
            }
        )
    guests = []
    for mm in fleet.machines:
        if not mm.nics:
            continue
        addrs = state.addresses.get(mm.name, [])
        raw = state.live.get(mm.name)
        nics = []
        for i, nic in enumerate(mm.nics):
            tap = names.tap(mm.name, i)
            link = stats.get(tap) if raw is not None else None
            nics.append(
                {
                    "nic": i,
                    "network": nic.network,
                    "ip": addrs[i] if i < len(addrs) else "",
                    "dhcp": not nic.ip,
                    "mac": macs[mm.name][i],
                    "tap": tap if link is not None else None,
                    "rx_bytes": link["rx_bytes"] if link else None,
                    "tx_bytes": link["tx_bytes"] if link else None,
                }
            )
        guests.append(
            {
                "name": mm.name,
                "state": machine_states.get(mm.name, "absent"),
                "egress": mm.egress,
                "forwards": [str(f) for f in mm.forwards],
                "cut": mm.name in state.cut,
                "wired": raw is not None,
                "capture": sorted(k for k in state.procs if k.startswith(f"cap:{mm.name}:")),
                "nics": nics,
            }
        )
    return {
        "netns": fleet.host.netns,
        "netns_created": bool(state.netns.get("created")),
        "br_netfilter": br_netfilter,
        "error": error,
        "networks": networks,
        "guests": guests,
    }
