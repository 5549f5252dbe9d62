"""warden's nftables ruleset for one network namespace, as `nft -j` commands (pure).

Two tables, both named `warden`, rebuilt as a whole in one nft transaction whenever guests or
networks come or go (`add table; delete table; add table ...` is atomic: no packet ever sees a
half-built ruleset, and a removed guest leaves nothing behind). Cut and restore change one set
element, so they take one small transaction.

bridge family, table warden: the only place every frame of a guest passes with the guest's
port (tap) known, including guest-to-guest frames that are never routed.
    prerouting (priority -300)  iifname @cut drop; iifname vmap @ports -> chain p-TAP
    p-TAP (one per NIC)         wrong source MAC, ARP or IPv4 address (anti-spoofing), any
                                ethertype but IPv4 and ARP: drop; else mark the packet with
                                its guest's mark
    postrouting (priority 300)  oifname @cut drop
ip family, table warden: stateful rules (conntrack does not exist in the bridge family here).
Bridged IPv4 frames reach them through br_netfilter (each bridge is made with
nf_call_iptables=1), routed ones directly; the guest is known by the mark set above.
    prerouting/output (nat)     to a local address: jump forwards (DNAT to guests)
    postrouting (nat)           from a nat=true subnet to outside warden's subnets: masquerade;
                                DNATed connections from a guest (hairpin): masquerade
    forward, input (filter)     established/related: accept; DHCP to the host: accept;
                                then meta mark vmap @egress -> chain g-GUEST
    g-GUEST (one per guest)     its egress policy for new flows: accept, drop, or a rate
"""

from typing import Any

from warden.net import names
from warden.net.plan import GuestPlan, NetPlan, parse_rate

Cmd = dict[str, Any]


def _match(left: Any, right: Any, op: str = "==") -> Cmd:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Cmd:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> Cmd:
    return {"meta": {"key": key}}


def _ct(key: str) -> Cmd:
    return {"ct": {"key": key}}


def _prefix(subnet: str) -> Cmd:
    addr, _, length = subnet.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


class _Table:
    def __init__(self, family: str):
        self.family = family
        self.cmds: list[Cmd] = []

    def chain(self, name: str, **base: Any) -> None:
        self.cmds.append(
            {"add": {"chain": {"family": self.family, "table": names.TABLE, "name": name, **base}}}
        )

    def base_chain(self, name: str, type_: str, hook: str, prio: int) -> None:
        self.chain(name, type=type_, hook=hook, prio=prio, policy="accept")

    def rule(self, chain: str, *expr: Cmd, comment: str = "") -> None:
        body: Cmd = {
            "family": self.family,
            "table": names.TABLE,
            "chain": chain,
            "expr": list(expr),
        }
        if comment:
            body["comment"] = comment
        self.cmds.append({"add": {"rule": body}})

    def set(self, name: str, type_: str | list[str], interval: bool = False, **extra: Any) -> None:
        body: Cmd = {"family": self.family, "table": names.TABLE, "name": name, "type": type_}
        if interval:
            body["flags"] = ["interval"]
        body.update(extra)
        kind = "map" if "map" in extra else "set"
        self.cmds.append({"add": {kind: body}})

    def elements(self, name: str, elems: list[Any]) -> None:
        if elems:
            self.cmds.append(
                {
                    "add": {
                        "element": {
                            "family": self.family,
                            "table": names.TABLE,
                            "name": name,
                            "elem": elems,
                        }
                    }
                }
            )


def _fresh(family: str) -> list[Cmd]:
    table = {"family": family, "name": names.TABLE}
    return [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]


def build(instance: str, nets: list[NetPlan], guests: list[GuestPlan], cut: set[str]) -> list[Cmd]:
    """The whole ruleset: nft -j commands replacing both of warden's tables atomically."""
    return (
        _fresh("bridge")
        + _bridge(instance, guests, cut)
        + _fresh("ip")
        + _ip(instance, nets, guests)
    )


def remove() -> list[Cmd]:
    """Commands deleting both tables (each may be absent)."""
    out: list[Cmd] = []
    for family in ("bridge", "ip"):
        table = {"family": family, "name": names.TABLE}
        out += [{"add": {"table": table}}, {"delete": {"table": table}}]
    return out


def cut_element(op: str, taps: tuple[str, ...]) -> list[Cmd]:
    """`op` is "add" (cut) or "delete" (restore): the guest's taps in or out of @cut."""
    if not taps:
        return []
    return [
        {
            op: {
                "element": {
                    "family": "bridge",
                    "table": names.TABLE,
                    "name": "cut",
                    "elem": list(taps),
                }
            }
        }
    ]


def _bridge(instance: str, guests: list[GuestPlan], cut: set[str]) -> list[Cmd]:
    t = _Table("bridge")
    t.chain(names.owner_chain(instance))
    t.set("cut", "ifname")
    t.set("ports", "ifname", map="verdict")
    for g in guests:
        for nic in g.nics:
            chain = names.port_chain(nic.tap)
            t.chain(chain)
            etype = _payload("ether", "type")
            t.rule(chain, _match(_payload("ether", "saddr"), nic.mac, "!="), {"drop": None})
            t.rule(chain, {"mangle": {"key": _meta("mark"), "value": g.mark}})
            t.rule(
                chain,
                _match(etype, "arp"),
                _match(_payload("arp", "saddr ether"), nic.mac, "!="),
                {"drop": None},
            )
            t.rule(
                chain,
                _match(etype, "arp"),
                _match(_payload("arp", "saddr ip"), {"set": [nic.ip, "0.0.0.0"]}, "!="),
                {"drop": None},
            )
            # DHCP before the guest has its address: from 0.0.0.0 to the server port.
            t.rule(
                chain,
                _match(etype, "ip"),
                _match(_payload("ip", "saddr"), "0.0.0.0"),
                _match(_payload("udp", "dport"), 67),
                {"accept": None},
            )
            t.rule(
                chain,
                _match(etype, "ip"),
                _match(_payload("ip", "saddr"), nic.ip, "!="),
                {"drop": None},
            )
            t.rule(chain, _match(etype, {"set": ["ip", "arp"]}, "!="), {"drop": None})
    t.elements(
        "ports",
        [
            [nic.tap, {"jump": {"target": names.port_chain(nic.tap)}}]
            for g in guests
            for nic in g.nics
        ],
    )
    t.elements("cut", [tap for g in guests if g.name in cut for tap in g.taps])
    t.base_chain("prerouting", "filter", "prerouting", -300)
    t.rule("prerouting", _match(_meta("iifname"), "@cut"), {"drop": None})
    t.rule("prerouting", {"vmap": {"key": _meta("iifname"), "data": "@ports"}})
    t.base_chain("postrouting", "filter", "postrouting", 300)
    t.rule("postrouting", _match(_meta("oifname"), "@cut"), {"drop": None})
    return t.cmds


def _egress_rules(t: _Table, g: GuestPlan) -> None:
    chain = names.guest_chain(g.name)
    t.chain(chain)
    if g.egress == "allow":
        t.rule(chain, {"accept": None}, comment=f"{g.name} egress allow")
        return
    rate = parse_rate(g.egress)
    if rate is not None:
        t.rule(
            chain,
            _match(_ct("state"), "new", "in"),
            {"limit": {"rate": rate[0], "per": rate[1], "burst": 5}},
            {"accept": None},
            comment=f"{g.name} egress {g.egress}",
        )
    t.rule(chain, {"counter": None}, {"drop": None}, comment=f"{g.name} egress denied")


def _ip(instance: str, nets: list[NetPlan], guests: list[GuestPlan]) -> list[Cmd]:
    t = _Table("ip")
    t.chain(names.owner_chain(instance))
    t.set("guest_nets", "ipv4_addr", interval=True)
    t.set("nat_src", "ipv4_addr", interval=True)
    t.set("egress", "mark", map="verdict")
    t.elements("guest_nets", [_prefix(n.subnet) for n in nets])
    t.elements("nat_src", [_prefix(n.subnet) for n in nets if n.nat])
    for g in guests:
        _egress_rules(t, g)
    t.elements(
        "egress", [[g.mark, {"jump": {"target": names.guest_chain(g.name)}}] for g in guests]
    )
    t.chain("forwards")
    for g in guests:
        for f in g.forwards:
            t.rule(
                "forwards",
                _match(_meta("l4proto"), f.proto),
                _match(_payload("th", "dport"), f.host_port),
                {"dnat": {"addr": f.guest_ip, "port": f.guest_port}},
                comment=g.name,
            )
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    t.base_chain("prerouting", "nat", "prerouting", -100)
    t.rule("prerouting", local, {"jump": {"target": "forwards"}})
    t.base_chain("output", "nat", "output", -100)
    t.rule("output", local, {"jump": {"target": "forwards"}})
    t.base_chain("postrouting", "nat", "postrouting", 100)
    t.rule(
        "postrouting",
        _match(_payload("ip", "saddr"), "@nat_src"),
        _match(_payload("ip", "daddr"), "@guest_nets", "!="),
        {"masquerade": None},
    )
    t.rule(
        "postrouting",
        _match(_ct("status"), "dnat", "in"),
        _match(_payload("ip", "saddr"), "@guest_nets"),
        {"masquerade": None},
    )
    established = _match(_ct("state"), ["established", "related"], "in")
    egress = {"vmap": {"key": _meta("mark"), "data": "@egress"}}
    t.base_chain("forward", "filter", "forward", 0)
    t.rule("forward", established, {"accept": None})
    t.rule("forward", egress)
    t.base_chain("input", "filter", "input", 0)
    t.rule("input", established, {"accept": None})
    t.rule(
        "input",
        _match(_payload("udp", "sport"), 68),
        _match(_payload("udp", "dport"), 67),
        {"accept": None},
    )
    t.rule("input", egress)
    return t.cmds


def owners(listing: dict[str, Any]) -> set[str]:
    """Instances named by owner-INSTANCE-vN chains in an `nft -j list ...` answer."""
    out = set()
    for item in listing.get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("table") == names.TABLE and chain["name"].startswith("owner-"):
            out.add(chain["name"])
    return out
