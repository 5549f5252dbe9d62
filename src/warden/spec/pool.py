"""The fleet's `[[pool]]` tables: a template guest per attacker address (docs/formats/fleet.md).

A pool expands into ordinary machines, `NAME-1` ... `NAME-N` (one per address), which the
daemon runs like any other; the pool (warden.forensics.pool*) starts, hands out and recycles
them. Validation reuses the machine fields and checks of warden.spec.fleet, which calls
`parse_pools` (a function-level import there: this module builds on fleet.py's helpers).
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from warden.spec import checks
from warden.spec import fleet as fl
from warden.spec.recycle import parse_duration

POOL_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,19}\Z")
LISTEN = re.compile(r"\Atcp:(\d{1,5})\Z")
MAX_ADDRESSES = 64
IDLE_RANGE = (10, 30 * 86400)
WAIT_RANGE = (0, 120)
CLAIM_TIMEOUT_RANGE = (1, 60)
# Machine fields a pool owns itself (docs/formats/fleet.md says why each is not a template's).
OWN = ("nics", "forwards", "autostart", "restart", "recycle", "name", "owner")
TEMPLATE = tuple(k for k in fl.MACHINE_FIELDS if k not in OWN)


@dataclass(frozen=True)
class Pool:
    name: str
    owner: str
    network: str
    addresses: tuple[str, ...]
    size: int = 1
    listen: int = 22  # the tcp port in the fleet's namespace
    port: int = 0  # the guests' port; 0: the same as listen
    idle: int = 600
    wait: int = 20
    claim_timeout: int = 5
    template: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def guest_port(self) -> int:
        return self.port or self.listen

    def guest_name(self, index: int) -> str:
        """Guest `index` (0-based) is machine NAME-(index+1)."""
        return f"{self.name}-{index + 1}"

    @property
    def guests(self) -> tuple[str, ...]:
        return tuple(self.guest_name(i) for i in range(len(self.addresses)))


def _duration(lo: int, hi: int) -> fl.Check:
    def check(v: Any) -> int:
        seconds = parse_duration(checks._str(v))
        if not lo <= seconds <= hi:
            raise ValueError(f'expected a duration from {lo}s to {hi}s, e.g. "10m"')
        return seconds

    return check


def _listen(v: Any) -> int:
    m = LISTEN.fullmatch(v) if isinstance(v, str) else None
    if m is None or not 0 < int(m[1]) < 65536:
        raise ValueError('expected "tcp:PORT" with a port from 1 to 65535, e.g. "tcp:22"')
    return int(m[1])


def _addresses(v: Any) -> tuple[str, ...]:
    items = checks._str_list(v)
    if not 1 <= len(items) <= MAX_ADDRESSES:
        raise ValueError(f"expected 1 to {MAX_ADDRESSES} IPv4 addresses, one per guest")
    for a in items:
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            raise ValueError(f"{a!r} is not an IPv4 address") from None
    if len(set(items)) != len(items):
        raise ValueError("an address is listed twice; each guest needs its own")
    return tuple(items)


POOL_FIELDS: dict[str, fl.Check] = {
    "name": checks._pattern(POOL_NAME, "lower-case letters, digits and '-', at most 20"),
    "owner": checks._str,
    "network": checks._str,
    "addresses": _addresses,
    "size": checks._int_range(0, MAX_ADDRESSES),
    "listen": _listen,
    "port": checks._int_range(1, 65535),
    "idle": _duration(*IDLE_RANGE),
    "wait": _duration(*WAIT_RANGE),
    "claim_timeout": _duration(*CLAIM_TIMEOUT_RANGE),
    **{k: fl.MACHINE_FIELDS[k] for k in TEMPLATE},
}
REQUIRED = ("name", "owner", "network", "addresses")


def machines(pool: Pool) -> list[fl.Machine]:
    """The pool's guests as machines: the template, one NIC each, started by the pool."""
    return [
        fl.Machine(
            name=pool.guest_name(i),
            owner=pool.owner,
            nics=(fl.Nic(pool.network, ip),),
            autostart=False,
            restart="no",
            **pool.template,
        )
        for i, ip in enumerate(pool.addresses)
    ]


def parse_pools(
    raw_list: list[Any],
    owners: list[fl.Owner],
    networks: list[fl.Network],
    machines_so_far: list[fl.Machine],
    problems: "fl._Problems",
) -> tuple[list[Pool], list[fl.Machine]]:
    """Every [[pool]] table, and the machines they add (checked like [[machine]] tables)."""
    pools: list[Pool] = []
    added: list[fl.Machine] = []
    for i, raw in enumerate(raw_list):
        name = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        label = f"pool {name!r}" if isinstance(raw, dict) and "name" in raw else f"pool #{i + 1}"
        if isinstance(raw, dict):
            for key in OWN[:5]:
                if key in raw:
                    problems.add(
                        label,
                        f"key {key!r} is not allowed in a pool: the pool sets it "
                        "(docs/formats/fleet.md)",
                    )
            raw = {k: v for k, v in raw.items() if k not in OWN[:5]}
        vals = fl._table(raw, POOL_FIELDS, label, problems, REQUIRED)
        if not all(k in vals for k in REQUIRED):
            continue
        template = {k: vals.pop(k) for k in TEMPLATE if k in vals}
        pool = Pool(**vals, template=template)
        before = len(problems.items)
        _check_pool(pool, label, networks, pools, machines_so_far, problems)
        for m in machines(pool):
            fl._check_machine(m, label, owners, networks, machines_so_far + added, problems)
            added.append(m)
        if len(problems.items) == before:
            pools.append(pool)
    return pools, added


def _check_pool(
    pool: Pool,
    label: str,
    networks: list[fl.Network],
    earlier: list[Pool],
    machines_so_far: list[fl.Machine],
    problems: "fl._Problems",
) -> None:
    if any(p.name == pool.name for p in earlier):
        problems.add(label, "name is used twice; pool names must be unique")
    if pool.size > len(pool.addresses):
        problems.add(
            label,
            f"size = {pool.size} is more than the {len(pool.addresses)} addresses: each warm "
            "guest needs an address of its own",
        )
    if not any(n.name == pool.network for n in networks):
        known = ", ".join(n.name for n in networks) or "none defined"
        problems.add(label, f"network = {pool.network!r} is not a [[network]] (known: {known})")
    taken = {m.name for m in machines_so_far}
    for guest in pool.guests:
        if guest in taken:
            problems.add(label, f"its guest {guest!r} has the name of a [[machine]]")
    for m in machines_so_far:
        for f in m.forwards:
            if f.proto == "tcp" and f.host_port == pool.listen:
                problems.add(
                    label, f'listen = "tcp:{pool.listen}": the port is {m.name!r}\'s forward'
                )
    for p in earlier:
        if p.listen == pool.listen:
            problems.add(label, f'listen = "tcp:{pool.listen}" is pool {p.name!r}\'s too')
