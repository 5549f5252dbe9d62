"""The fleet file (TOML): what guests exist, who owns them, and how the host is shared.

`load(path)` parses and validates a whole file and returns a Fleet, or raises SpecError listing
every problem, each naming the file, the table (machine, owner, ...), the key, the bad value
and what is allowed. Nothing is applied before the whole file is valid.

The schema is declared once, as data (the FIELDS tables of spec/checks.py), so that the
validation, the documentation (docs/fleet.md) and the "did you mean" hints come from one place.
The dataclasses a Fleet is made of are in spec/model.py; this module re-exports them.
"""

import difflib
import ipaddress
import tomllib
from pathlib import Path
from typing import Any

from warden.errors import SpecError
from warden.spec.checks import (
    CLUSTER_FIELDS,
    CONCENTRATOR_FIELDS,
    HOST_FIELDS,
    LOGS_FIELDS,
    MACHINE_FIELDS,
    NETWORK_FIELDS,
    OWNER_FIELDS,
    TOP_LEVEL,
    WEB_FIELDS,
    Check,
)
from warden.spec.model import (
    CRYPT_HASH,
    EGRESS_RATE,
    FORWARD,
    LINE_NAME,
    MACHINE_NAME,
    MAX_SERIAL_LINES,
    NETNS_NAME,
    NETWORK_NAME,
    OWNER_NAME,
    RESTART_POLICIES,
    WEB_URL,
    Cluster,
    Concentrator,
    Fleet,
    Forward,
    Host,
    Logs,
    Machine,
    Network,
    Nic,
    Owner,
    Web,
)
from warden.uml import cmdline

MIN_MEMORY = 32 << 20


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{self.source}: {where}: {text}")

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError("\n".join(self.items))


def _hint(key: str, allowed: dict[str, Check]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"key {key!r} is unknown{hint}; allowed: {', '.join(allowed)}"


def _table(
    raw: Any, fields: dict[str, Check], where: str, problems: _Problems, required: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.add(where, "expected a table")
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        check = fields.get(key)
        if check is None:
            problems.add(where, _hint(key, fields))
            continue
        try:
            out[key] = check(value)
        except ValueError as e:
            problems.add(where, f"{key} = {value!r}: {e}")
    for key in required:
        if key not in raw:
            problems.add(where, f"key {key!r} is required")
    return out


def _array(raw: Any, name: str, problems: _Problems) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(name, f"expected [[{name}]] tables")
        return []
    return raw


def parse(text: str, source: str = "<fleet>") -> Fleet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from None
    problems = _Problems(source)
    for key in doc:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(key, TOP_LEVEL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add("top level", f"{key!r} is unknown{hint}; allowed: {', '.join(TOP_LEVEL)}")

    host = Host(**_table(doc.get("host", {}), HOST_FIELDS, "[host]", problems, ()))
    conc = Concentrator(
        **_table(doc.get("concentrator", {}), CONCENTRATOR_FIELDS, "[concentrator]", problems, ())
    )
    web = Web(**_table(doc.get("web", {}), WEB_FIELDS, "[web]", problems, ()))
    _check_web(web, problems)
    logs = Logs(**_table(doc.get("logs", {}), LOGS_FIELDS, "[logs]", problems, ()))
    cluster = Cluster(**_table(doc.get("cluster", {}), CLUSTER_FIELDS, "[cluster]", problems, ()))

    owners: list[Owner] = []
    for i, raw in enumerate(_array(doc.get("owner"), "owner", problems)):
        label = (
            f"owner {raw.get('name', f'#{i + 1}')!r}"
            if isinstance(raw, dict)
            else f"owner #{i + 1}"
        )
        vals = _table(raw, OWNER_FIELDS, label, problems, ("name",))
        if "name" in vals:
            if any(o.name == vals["name"] for o in owners):
                problems.add(label, "name is used twice; owner names must be unique")
            owners.append(Owner(**vals))

    networks: list[Network] = []
    for i, raw in enumerate(_array(doc.get("network"), "network", problems)):
        label = (
            f"network {raw.get('name', f'#{i + 1}')!r}"
            if isinstance(raw, dict)
            else f"network #{i + 1}"
        )
        vals = _table(raw, NETWORK_FIELDS, label, problems, ("name", "subnet"))
        if "name" in vals and "subnet" in vals:
            net = Network(**vals)
            for other in networks:
                if other.name == net.name:
                    problems.add(label, "name is used twice; network names must be unique")
                elif other.net.overlaps(net.net):
                    problems.add(
                        label,
                        f"subnet {net.subnet} overlaps network {other.name!r} ({other.subnet})",
                    )
            networks.append(net)

    machines: list[Machine] = []
    for i, raw in enumerate(_array(doc.get("machine"), "machine", problems)):
        label = (
            f"machine {raw.get('name', f'#{i + 1}')!r}"
            if isinstance(raw, dict)
            else f"machine #{i + 1}"
        )
        vals = _table(raw, MACHINE_FIELDS, label, problems, ("name", "owner"))
        if "name" not in vals or "owner" not in vals:
            continue
        m = Machine(**vals)
        _check_machine(m, label, owners, networks, machines, problems)
        machines.append(m)

    # Pools build on this module's checks: imported here, the module imports this one.
    from warden.spec.pool import parse_pools

    raw_pools = _array(doc.get("pool"), "pool", problems)
    pools, pool_machines = parse_pools(raw_pools, owners, networks, machines, problems)
    machines += pool_machines
    if pools and not host.netns:
        problems.add(
            "[host]",
            'a [[pool]] needs netns = "NAME": its listen port takes every local address of '
            "the namespace, which must not be the host's own (its sshd)",
        )

    fleet = Fleet(
        source=source,
        host=host,
        concentrator=conc,
        web=web,
        logs=logs,
        cluster=cluster,
        owners=tuple(owners),
        networks=tuple(networks),
        machines=tuple(machines),
        pools=tuple(pools),
    )
    if host.memory_budget:
        floors = sum(m.memory_min for m in machines)
        if floors > host.memory_budget:
            problems.add(
                "[host]",
                f"memory_budget = {host.memory_budget >> 20}M is below the sum of the machines' "
                f"memory_min ({floors >> 20}M): raise the budget or lower the floors",
            )
    problems.raise_if_any()
    return fleet


def _check_web(web: Web, problems: _Problems) -> None:
    """What no single [web] key can say alone."""
    if not web.listen:
        for key in ("url", "cert", "key", "insecure_http"):
            if getattr(web, key):
                problems.add("[web]", f"{key} is set but listen is not: the web console is off")
        return
    host, _ = web.host_port
    ip = ipaddress.ip_address(host)
    if bool(web.cert) != bool(web.key):
        problems.add(
            "[web]",
            "cert and key go together: give both PEM files, or neither "
            "(warden then makes a self-signed certificate in WARDEN_HOME/keys)",
        )
    if web.insecure_http:
        if not ip.is_loopback:
            problems.add(
                "[web]",
                f"insecure_http = true with listen = {web.listen!r}: plain HTTP is only served on "
                'a loopback address (e.g. "127.0.0.1:8443"); elsewhere logins and consoles need '
                "HTTPS",
            )
        if web.cert:
            problems.add("[web]", "insecure_http = true and cert/key: choose HTTPS or plain HTTP")
    if web.url and web.url.split("://", 1)[0] != web.scheme:
        problems.add(
            "[web]",
            f"url = {web.url!r} does not match the scheme served ({web.scheme}; "
            "insecure_http decides)",
        )
    if ip.is_unspecified and not web.url:
        problems.add(
            "[web]",
            f"listen = {web.listen!r} serves every address: set url = "
            '"https://NAME:PORT" to the address browsers use (login links are made for it)',
        )


def _check_machine(
    m: Machine,
    label: str,
    owners: list[Owner],
    networks: list[Network],
    earlier: list[Machine],
    problems: _Problems,
) -> None:
    if any(o.name == m.name for o in earlier):
        problems.add(label, "name is used twice; machine names must be unique")
    if not any(o.name == m.owner for o in owners):
        known = ", ".join(o.name for o in owners) or "none defined"
        problems.add(label, f"owner = {m.owner!r} is not an [[owner]] (known: {known})")
    if m.memory < MIN_MEMORY:
        problems.add(label, f"memory = {m.memory >> 20}M is too small; at least 32M")
    if m.memory_min > m.memory:
        problems.add(
            label,
            f"memory_min ({m.memory_min >> 20}M) is above memory ({m.memory >> 20}M), "
            "the boot size and maximum",
        )
    if (m.tty_log or m.disguise) and m.kernel == "stock":
        problems.add(
            label,
            'tty_log and disguise need the honeypot kernel: set kernel = "honeypot" '
            "(built by `warden kernel build honeypot`)",
        )
    if m.jail or m.tty_log:
        setting = "jail = true" if m.jail else "tty_log = true"
        for token in cmdline.user_args(m.kernel_args):
            if cmdline.param_name(token) == cmdline.INIT_KEY:
                problems.add(
                    label,
                    f"kernel_args: 'init' is not allowed with {setting}: warden's init reads "
                    "the seed disk (hostname, passwords, keys) and the jail is emptied only "
                    "once it has; set jail = false and tty_log = false to boot another init",
                )
    nets = {n.name: n for n in networks}
    for nic in m.nics:
        net = nets.get(nic.network)
        if net is None:
            known = ", ".join(nets) or "none defined"
            problems.add(
                label, f"nic network {nic.network!r} is not a [[network]] (known: {known})"
            )
            continue
        if nic.ip:
            addr = ipaddress.IPv4Address(nic.ip)
            if addr not in net.net:
                problems.add(label, f"nic ip {nic.ip} is outside {net.name}'s subnet {net.subnet}")
            elif (
                addr in (net.net.network_address, net.net.broadcast_address)
                or nic.ip == net.gateway
            ):
                problems.add(
                    label,
                    f"nic ip {nic.ip} is reserved in {net.subnet} (network, gateway .1, broadcast)",
                )
            for other in earlier:
                if any(o.ip == nic.ip for o in other.nics):
                    problems.add(label, f"nic ip {nic.ip} is taken by machine {other.name!r}")
    for fwd in m.forwards:
        for other in earlier:
            if any(f.host_port == fwd.host_port and f.proto == fwd.proto for f in other.forwards):
                problems.add(
                    label, f"forward {fwd}: host port {fwd.host_port} is taken by {other.name!r}"
                )
    if m.forwards and not m.nics:
        problems.add(label, "forwards need a NIC (nics = [{ network = ... }])")


def load(path: str | Path) -> Fleet:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such fleet file") from None
    except OSError as e:
        raise SpecError(f"{p}: cannot read: {e.strerror}") from None
    return parse(text, str(p))


def validate_machine(raw: dict[str, Any], fleet: Fleet, source: str) -> Machine:
    """One [[machine]] table checked against an existing fleet (for `warden create`)."""
    problems = _Problems(source)
    vals = _table(
        raw, MACHINE_FIELDS, f"machine {raw.get('name', '?')!r}", problems, ("name", "owner")
    )
    problems.raise_if_any()
    m = Machine(**vals)
    _check_machine(
        m,
        f"machine {m.name!r}",
        list(fleet.owners),
        list(fleet.networks),
        list(fleet.machines),
        problems,
    )
    problems.raise_if_any()
    return m


# What the rest of warden reads from here: the dataclasses (spec/model.py), the FIELDS tables
# (spec/checks.py), parse, load and validate_machine.
__all__ = [
    "CLUSTER_FIELDS",
    "CONCENTRATOR_FIELDS",
    "CRYPT_HASH",
    "EGRESS_RATE",
    "FORWARD",
    "HOST_FIELDS",
    "LINE_NAME",
    "LOGS_FIELDS",
    "MACHINE_FIELDS",
    "MACHINE_NAME",
    "MAX_SERIAL_LINES",
    "NETNS_NAME",
    "NETWORK_FIELDS",
    "NETWORK_NAME",
    "OWNER_FIELDS",
    "OWNER_NAME",
    "RESTART_POLICIES",
    "WEB_FIELDS",
    "WEB_URL",
    "Check",
    "Cluster",
    "Concentrator",
    "Fleet",
    "Forward",
    "Host",
    "Logs",
    "Machine",
    "Network",
    "Nic",
    "Owner",
    "Web",
    "load",
    "parse",
    "validate_machine",
]
