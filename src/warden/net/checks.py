"""Checks of a fleet file's networks before it is applied (pure: facts in, an error or nothing).

The network service gathers the facts (what the helper in the namespace reports: nftables
tables, links, addresses, bound ports; what state.json says runs) and these functions decide;
each raises a WardenError that names the fleet file, the machine or network, and the way out.
"""

import ipaddress
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warden.errors import Conflict, SpecError
from warden.net import names, rules
from warden.net.errors import NetError
from warden.net.state import State
from warden.spec.fleet import Fleet


def wanted(fleet: Fleet) -> bool:
    """Does the fleet ask for any network at all?"""
    return bool(fleet.networks) or any(mm.nics for mm in fleet.machines)


def where(netns: str) -> str:
    return f"network namespace {netns!r}" if netns else "the host's own network namespace"


def check_tools(new: Fleet, which: Callable[[str], str | None] = shutil.which) -> None:
    """The host programs the fleet's networks need."""
    src = new.source
    for tool, pkg in (("nft", "nftables"), ("dnsmasq", "dnsmasq-base")):
        if which(tool) is None:
            what = "nftables" if tool == "nft" else tool
            raise NetError(
                f"{src}: the fleet has networks but {what} is missing (no `{tool}` in "
                f"PATH {os.environ.get('PATH', '')}): apt-get install {pkg}; nothing applied"
            )
    if any(mm.honeypot and mm.nics for mm in new.machines) and which("tcpdump") is None:
        raise NetError(
            f"{src}: honeypot guests are captured but tcpdump is missing: "
            "apt-get install tcpdump; nothing applied"
        )


def check_addresses(new: Fleet) -> None:
    """No machine gives one address to two of its NICs."""
    for mm in new.machines:
        ips = [n.ip for n in mm.nics if n.ip]
        dup = {ip for ip in ips if ips.count(ip) > 1}
        if dup:
            raise SpecError(
                f"{new.source}: machine {mm.name!r}: nic ip {sorted(dup)[0]} is given to two of "
                "its NICs; each NIC needs its own address"
            )


def check_live_guests(new: Fleet, state: State) -> None:
    """What running guests use stays as it is: their namespace and their networks."""
    live = state.live
    if not live:
        return
    cur = state.netns.get("name", "")
    if new.host.netns != cur:
        raise Conflict(
            f"{new.source}: [host] netns changes from {cur!r} to {new.host.netns!r} while "
            f"guests use networks there ({', '.join(sorted(live))}); stop them first"
        )
    nets = {n.name: n for n in new.networks}
    for g in state.live_guests():
        if new.machine(g.name) is None:
            continue  # it is being removed: its network goes when it has stopped
        for nic in g.nics:
            built = state.networks.get(nic.network, {})
            n = nets.get(nic.network)
            if n is None or n.subnet != built.get("subnet") or n.nat != built.get("nat"):
                raise Conflict(
                    f"{new.source}: network {nic.network!r} would change or go while "
                    f"{g.name} runs on it; stop {g.name} first"
                )


@dataclass
class HostFacts:
    """What the helper reported of the namespace the fleet's networks would live in."""

    chains: list[Any] = field(default_factory=list)  # `nft list table` of each table named ours
    links: list[dict[str, Any]] = field(default_factory=list)  # agent `links`
    addresses: list[list[Any]] = field(default_factory=list)  # agent `addresses`
    busy_ports: set[tuple[str, int]] = field(default_factory=set)  # forwards' ports bound


def ports_to_probe(new: Fleet, state: State) -> list[tuple[str, int]]:
    """The forwards' host ports to ask about: those warden has not installed itself."""
    installed = {(f.proto, f.host_port) for g in state.live_guests() for f in g.forwards}
    out = []
    for mm in new.machines:
        for f in mm.forwards:
            if (f.proto, f.host_port) not in installed and (f.proto, f.host_port) not in out:
                out.append((f.proto, f.host_port))
    return out


def check_host(new: Fleet, instance: str, facts: HostFacts) -> None:
    """Nothing in the namespace is in the way: another home's tables, foreign interfaces with
    our bridges' names, subnets that overlap, ports a service already listens on."""
    at = where(new.host.netns)
    for chains in facts.chains:
        others = rules.owners(chains) - {names.owner_chain(instance)}
        if others:
            raise Conflict(
                f"{new.source}: {at} already holds the nftables tables of another "
                f"warden home ({', '.join(sorted(others))}); give this fleet its own "
                "[host] netns"
            )
    ours = names.alias_prefix(instance)
    by_name = {link["name"]: link for link in facts.links}
    for n in new.networks:
        br = by_name.get(names.bridge(n.name))
        if br is not None and br["alias"] != names.bridge_alias(instance, n.name):
            raise Conflict(
                f"{new.source}: network {n.name!r}: interface {br['name']} already exists "
                f"in {at} and is not this warden's (alias {br['alias']!r})"
            )
    own_ifaces = {link["name"] for link in facts.links if link["alias"].startswith(ours)}
    for ifname, addr, plen in facts.addresses:
        if ifname in own_ifaces:
            continue
        have = ipaddress.IPv4Interface(f"{addr}/{plen}").network
        for n in new.networks:
            if have.overlaps(ipaddress.IPv4Network(n.subnet)):
                raise SpecError(
                    f"{new.source}: network {n.name!r}: subnet {n.subnet} overlaps "
                    f"{addr}/{plen} on {ifname} in {at}; choose another subnet"
                )
    for mm in new.machines:
        for f in mm.forwards:
            if (f.proto, f.host_port) in facts.busy_ports:
                raise Conflict(
                    f"{new.source}: machine {mm.name!r}: forward {f}: {f.proto} port "
                    f"{f.host_port} is already bound in {at} (a service listens "
                    "there); choose another host port"
                )
