"""What the fleet file asks of the network, worked out without touching the host (pure).

Addresses: a NIC with `ip` in the fleet file gets that address; a NIC without one gets an
address chosen by warden and handed out by dnsmasq (a static DHCP reservation for the NIC's
MAC), so that warden always knows every guest's address (port forwards and the anti-spoofing
rules need it). Chosen addresses are kept across fleet changes and daemon restarts (state.py)
as long as they stay valid; a new one is the lowest free address of the subnet.

Marks: each guest with a NIC gets a small number, kept as long as the guest is in the fleet;
its packets carry MARK_BASE | number from the bridge into the ip family's rules.
"""

import ipaddress
import re
from dataclasses import dataclass

from warden.net import names
from warden.net.errors import NetError
from warden.spec.fleet import Fleet, Machine, Network

RATE = re.compile(r"^(\d+)/(second|minute|hour)$")


@dataclass(frozen=True)
class NetPlan(Network):
    """A network as warden builds it: the fleet's (its subnet and gateway) and its bridge."""

    @classmethod
    def of(cls, net: Network) -> "NetPlan":
        return cls(net.name, net.subnet, net.nat)

    @property
    def prefix(self) -> int:
        return self.net.prefixlen

    @property
    def bridge(self) -> str:
        return names.bridge(self.name)


@dataclass(frozen=True)
class NicPlan:
    index: int
    network: str
    tap: str
    mac: str
    ip: str
    dhcp: bool  # the guest asks DHCP for its address (no ip in the fleet file)


@dataclass(frozen=True)
class ForwardPlan:
    proto: str
    host_port: int
    guest_ip: str
    guest_port: int


@dataclass(frozen=True)
class GuestPlan:
    name: str
    mark: int
    nics: tuple[NicPlan, ...]
    forwards: tuple[ForwardPlan, ...]
    egress: str  # "allow", "deny" or "N/second|minute|hour"

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(n.tap for n in self.nics)


def networks(fleet: Fleet) -> list[NetPlan]:
    return [NetPlan.of(n) for n in fleet.networks]


def _reserved(net: NetPlan) -> set[str]:
    n = net.net
    return {str(n.network_address), net.gateway, str(n.broadcast_address)}


def allocate(fleet: Fleet, previous: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every NIC's address, machine -> one address per NIC; NetError when a subnet is full."""
    nets = {n.name: NetPlan.of(n) for n in fleet.networks}
    taken: dict[str, set[str]] = {name: _reserved(p) for name, p in nets.items()}
    out: dict[str, list[str]] = {}
    for m in fleet.machines:  # static addresses first: they win over earlier choices
        out[m.name] = [nic.ip for nic in m.nics]
        for nic in m.nics:
            if nic.ip and nic.network in taken:
                taken[nic.network].add(nic.ip)
    for m in fleet.machines:  # then the addresses warden chose before, if still valid
        old = previous.get(m.name, [])
        for i, nic in enumerate(m.nics):
            if nic.ip or i >= len(old) or nic.network not in nets:
                continue
            ip = old[i]
            try:
                ok = ipaddress.IPv4Address(ip) in nets[nic.network].net
            except ValueError:
                ok = False
            if ok and ip not in taken[nic.network]:
                out[m.name][i] = ip
                taken[nic.network].add(ip)
    for m in fleet.machines:  # then new choices: the lowest free address
        for i, nic in enumerate(m.nics):
            if out[m.name][i] or nic.network not in nets:
                continue
            net = nets[nic.network]
            free = next((str(h) for h in net.net.hosts() if str(h) not in taken[net.name]), None)
            if free is None:
                raise NetError(
                    f"network {net.name!r} ({net.subnet}) has no free address left for "
                    f"machine {m.name!r} NIC {i}: use a larger subnet"
                )
            out[m.name][i] = free
            taken[net.name].add(free)
    return out


def assign_marks(fleet: Fleet, previous: dict[str, int]) -> dict[str, int]:
    """machine -> mark index (1..2**20-1) for every machine with a NIC; kept while it exists."""
    wanted = [m.name for m in fleet.machines if m.nics]
    out = {n: previous[n] for n in wanted if n in previous}
    used = set(out.values())
    nxt = 1
    for n in wanted:
        if n in out:
            continue
        while nxt in used:
            nxt += 1
        if nxt > names.MARK_MAX_INDEX:
            raise NetError("more than a million guests with NICs: no packet mark left")
        out[n] = nxt
        used.add(nxt)
    return out


def guest(
    instance: str,
    spec: Machine,
    addresses: list[str],
    mark_index: int,
    macs: list[str] | None = None,  # a disguised machine's persona gives its NICs' MACs
) -> GuestPlan:
    nics = tuple(
        NicPlan(
            index=i,
            network=nic.network,
            tap=names.tap(spec.name, i),
            mac=macs[i] if macs and i < len(macs) else names.mac(instance, spec.name, i),
            ip=addresses[i],
            dhcp=not nic.ip,
        )
        for i, nic in enumerate(spec.nics)
    )
    # A forward goes to the guest's first NIC (the one with the default route).
    fwds = tuple(ForwardPlan(f.proto, f.host_port, nics[0].ip, f.guest_port) for f in spec.forwards)
    return GuestPlan(spec.name, names.mark(mark_index), nics, fwds, spec.egress)


def seed_network(g: GuestPlan, nets: dict[str, NetPlan]) -> dict[str, str]:
    """network.env for the seed disk (docs/formats/seed.md): eth0 plus WARDEN_IP_N for ethN."""
    env: dict[str, str] = {}
    for nic in g.nics:
        net = nets[nic.network]
        ip = "" if nic.dhcp else f"{nic.ip}/{net.prefix}"
        if nic.index == 0:
            env["WARDEN_IP"] = ip
            env["WARDEN_GATEWAY"] = "" if nic.dhcp else net.gateway
            env["WARDEN_DNS"] = "" if nic.dhcp else net.gateway
        else:
            env[f"WARDEN_IP_{nic.index}"] = ip
    return env


def kernel_arg(nic: NicPlan, fd: int) -> str:
    """The UML vector driver's tap-fd transport; vec=0: a tap fd has no recvmmsg/sendmmsg."""
    return f"vec{nic.index}:transport=fd,fd={fd},vec=0,mac={nic.mac}"


def parse_rate(egress: str) -> tuple[int, str] | None:
    m = RATE.match(egress)
    return (int(m[1]), m[2]) if m else None
