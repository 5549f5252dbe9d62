"""The pools' nftables table, as nft commands (pure). The gate (poolgate.py) runs them in the
fleet's network namespace.

One table `ip warden_pool`, beside net's two `warden` tables (which net rebuilds whole; this
one it never touches). For each pool P with guests G (in the pool's order) listening on port L:

    map  dnat-G   ipv4_addr : ipv4_addr, size 1     the one address guest G serves
    set  srcs-P   the addresses that have a guest of P
    set  seen-P   addresses of srcs-P that sent a packet (to any port) within SEEN_TIMEOUT
    set  wait-P   new addresses that found no warm guest, for `wait` seconds, at most
                  MAX_WAITING (poolpolicy)
    set  hand-P   addresses of srcs-P that completed a TCP handshake with their guest: a
                  packet of theirs to port L in a connection conntrack marked ASSURED (set by
                  the client's ACK of the guest's SYN-ACK, which a spoofed address never
                  sends: it never sees the SYN-ACK). The policy releases a claim whose address
                  is not here within the pool's `claim_timeout`.

    prerouting (filter, priority -150: after conntrack, before NAT)
        ip saddr @srcs-P: update @seen-P (activity)
        tcp dport L, to a local address, ip saddr @srcs-P, ct status assured: add @hand-P
        tcp dport L, to a local address: jump claim-P
    claim-P
        ip saddr @srcs-P: return (on to the DNAT below)
        a SYN of a new connection, for each offered (warm) guest G, in order:
            add @dnat-G { ip saddr : G's address } add @srcs-P { ip saddr } return
            (a map of size 1 refuses a second element: the rule stops there and the SYN
            tries the next guest; so a guest goes to one address, and no process is in the
            packet's path)
        a SYN of a new connection: update @wait-P { ip saddr }, drop (the client retransmits)
        anything else: drop (the namespace's own port L is never reached)
    prerouting (nat, priority -100)
        tcp dport L, to a local address: jump nat-P
    nat-P
        for each guest G, in order: dnat to ip saddr map @dnat-G : the guests' port

Written in nft's own syntax, not its JSON: nft 1.0.6 (Debian 12) has no JSON form of the
statement that adds a map element from the packet path ("stmt ops map have no json
callback"); libnftables reads both. Every name comes from the fleet's checked names (letters,
digits, '-') behind a fixed prefix, every address is checked by ipaddress before it is written.

The claim chain is rewritten whole (flush and fill in one transaction) when the offered guests
change; elements are added and deleted one by one (map, unmap, forget). Two SYNs of one new
address on two CPUs can both pass `!= @srcs` and claim two guests: the DNAT takes the first
in guest order, and the policy frees the other.
"""

import ipaddress
import re
from dataclasses import dataclass

from warden.forensics.poolpolicy import MAX_WAITING

TABLE = "warden_pool"
FAMILY = "ip"
SEEN_TIMEOUT = 3  # seconds; the gate reports activity once a second or more often
# hand-P holds only addresses of srcs-P (one per guest, a few more in races), deleted with them.
MAX_HANDSHAKES = 1024
_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,40}\Z")


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ValueError(f"not a pool or guest name: {text!r}")
    return text


def _ip(text: str) -> str:
    return str(ipaddress.IPv4Address(text))


def dnat_map(guest: str) -> str:
    return f"dnat-{_name(guest)}"


def srcs_set(pool: str) -> str:
    return f"srcs-{_name(pool)}"


def seen_set(pool: str) -> str:
    return f"seen-{_name(pool)}"


def wait_set(pool: str) -> str:
    return f"wait-{_name(pool)}"


def hand_set(pool: str) -> str:
    return f"hand-{_name(pool)}"


@dataclass(frozen=True)
class PoolNet:
    """What the rules need of one pool."""

    name: str
    listen: int
    port: int  # the guests'
    wait: int
    guests: tuple[tuple[str, str], ...]  # (guest, address), in the pool's order


T = f"{FAMILY} {TABLE}"
SYN = "ct state new tcp flags & (syn | ack) == syn"


def _to_port(listen: int) -> str:
    return f"tcp dport {int(listen)} fib daddr type local"


def table(pools: list[PoolNet]) -> str:
    """The whole table, fresh (no address has a guest, none offered), in one transaction."""
    lines = [
        f"add table {T}",
        f"delete table {T}",
        f"add table {T}",
        f"add chain {T} prerouting {{ type filter hook prerouting priority -150; policy accept; }}",
        f"add chain {T} nat {{ type nat hook prerouting priority -100; policy accept; }}",
    ]
    for p in pools:
        name = _name(p.name)
        for guest, _addr in p.guests:
            lines.append(
                f"add map {T} {dnat_map(guest)} "
                "{ type ipv4_addr : ipv4_addr; size 1; flags dynamic; }"
            )
        lines.append(f"add set {T} {srcs_set(name)} {{ type ipv4_addr; flags dynamic; }}")
        lines.append(
            f"add set {T} {seen_set(name)} "
            f"{{ type ipv4_addr; flags dynamic,timeout; timeout {SEEN_TIMEOUT}s; }}"
        )
        lines.append(
            f"add set {T} {wait_set(name)} {{ type ipv4_addr; size {MAX_WAITING}; "
            f"flags dynamic,timeout; timeout {max(1, int(p.wait))}s; }}"
        )
        lines.append(
            f"add set {T} {hand_set(name)} {{ type ipv4_addr; size {MAX_HANDSHAKES}; "
            "flags dynamic; }"
        )
        lines.append(f"add chain {T} claim-{name}")
        lines.append(f"add chain {T} nat-{name}")
        # Activity: any packet from an address with a guest, to any port (a connection the
        # guest opened back to it too), not only to the pool's port.
        lines.append(
            f"add rule {T} prerouting ip saddr @{srcs_set(name)} "
            f"update @{seen_set(name)} {{ ip saddr }}"
        )
        # conntrack (priority -200) has already seen this packet: the ACK that completes the
        # handshake is ASSURED here.
        lines.append(
            f"add rule {T} prerouting {_to_port(p.listen)} ip saddr @{srcs_set(name)} "
            f"ct status assured add @{hand_set(name)} {{ ip saddr }}"
        )
        lines.append(f"add rule {T} prerouting {_to_port(p.listen)} jump claim-{name}")
        lines.append(f"add rule {T} nat {_to_port(p.listen)} jump nat-{name}")
        for guest, _addr in p.guests:
            lines.append(
                f"add rule {T} nat-{name} tcp dport {int(p.listen)} "
                f"dnat to ip saddr map @{dnat_map(guest)} : {int(p.port)}"
            )
        lines += offer(p, ())
    return "\n".join(lines) + "\n"


def offer(p: PoolNet, warm: tuple[str, ...]) -> list[str]:
    """claim-P rewritten (as lines of one transaction): the guests in `warm` may be claimed."""
    name = _name(p.name)
    addr = dict(p.guests)
    chain = f"claim-{name}"
    lines = [
        f"flush chain {T} {chain}",
        f"add rule {T} {chain} ip saddr @{srcs_set(name)} return",
    ]
    for guest in warm:
        lines.append(
            f"add rule {T} {chain} {SYN} "
            f"add @{dnat_map(guest)} {{ ip saddr : {_ip(addr[guest])} }} "
            f"add @{srcs_set(name)} {{ ip saddr }} return"
        )
    lines.append(f"add rule {T} {chain} {SYN} update @{wait_set(name)} {{ ip saddr }} drop")
    lines.append(f"add rule {T} {chain} drop")
    return lines


def map_src(pool: str, guest: str, addr: str, src: str) -> str:
    return (
        f"add element {T} {dnat_map(guest)} {{ {_ip(src)} : {_ip(addr)} }}\n"
        f"add element {T} {srcs_set(pool)} {{ {_ip(src)} }}\n"
    )


def unmap_guest(guest: str, src: str) -> str:
    return f"delete element {T} {dnat_map(guest)} {{ {_ip(src)} }}\n"


def drop_src(pool: str, src: str) -> list[str]:
    """`src` has no guest of `pool` any more: it is new again (seen goes by its timeout), and
    its next guest waits for a handshake of its own. Out of srcs first: no packet adds it to
    hand after. Separate commands: either element may be missing."""
    return [
        f"delete element {T} {srcs_set(pool)} {{ {_ip(src)} }}\n",
        f"delete element {T} {hand_set(pool)} {{ {_ip(src)} }}\n",
    ]


def forget(pool: str, src: str) -> str:
    return f"delete element {T} {wait_set(pool)} {{ {_ip(src)} }}\n"


def remove() -> str:
    return f"add table {T}\ndelete table {T}\n"


def elements(listing: object, name: str) -> list[object]:
    """The elements of set or map `name` in an `nft -j list table` answer (raw JSON)."""
    if not isinstance(listing, dict):
        return []
    for item in listing.get("nftables", []):
        for kind in ("set", "map"):
            body = item.get(kind) if isinstance(item, dict) else None
            if isinstance(body, dict) and body.get("name") == name:
                elem = body.get("elem", [])
                return list(elem) if isinstance(elem, list) else []
    return []


def addresses(elems: list[object]) -> list[str]:
    """IPv4 addresses of set elements (plain, or {"elem": {"val": ...}} with a timeout), or of
    map keys ([key, value]); anything else is skipped."""
    out = []
    for e in elems:
        if isinstance(e, list) and e:
            e = e[0]
        if isinstance(e, dict):
            e = e.get("elem", {}).get("val") if isinstance(e.get("elem"), dict) else None
        if isinstance(e, str):
            try:
                out.append(str(ipaddress.IPv4Address(e)))
            except ValueError:
                continue
    return out
