"""The fleet file (TOML): what guests exist, who owns them, and how the host is shared.

`load(path)` parses and validates a whole file and returns a Fleet, or raises SpecError listing
every problem, each naming the file, the table (machine, owner, ...), the key, the bad value
and what is allowed. Nothing is applied before the whole file is valid.

The schema is declared once, as data (the FIELDS tables below), so that validation, the
documentation (docs/fleet.md) and the "did you mean" hints all come from the same place.
"""

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warden.errors import SpecError
from warden.spec import recycle as recyclemod
from warden.uml import cmdline
from warden.units import SIZE_HELP, parse_size

if TYPE_CHECKING:
    from warden.spec.pool import Pool

# Names and identifiers match in full: every check uses fullmatch, and the patterns are anchored
# with \A and \Z (not ^ and $, which also match before a trailing newline) for callers that
# use .match (console/access.py).
MACHINE_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,30}\Z")
OWNER_NAME = re.compile(r"\A[a-z_][a-z0-9_-]{0,31}\Z")
LINE_NAME = re.compile(r"\A(con0|ssl\d{1,2})\Z")
MAX_SERIAL_LINES = 8
RESTART_POLICIES = ("no", "on-failure", "always")
EGRESS_RATE = re.compile(r"\A(\d+)/(second|minute|hour)\Z")
FORWARD = re.compile(r"\A(tcp|udp):(\d{1,5}):(\d{1,5})\Z")
CRYPT_HASH = re.compile(r"\A\$(1|5|6)\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}\Z")
NETNS_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
NETWORK_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,10}\Z")
WEB_URL = re.compile(
    r"\A(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?/?\Z"
)


@dataclass(frozen=True)
class Owner:
    name: str
    keys: tuple[str, ...] = ()
    password_hash: str = ""
    admin: bool = False


@dataclass(frozen=True)
class Nic:
    network: str
    ip: str = ""  # empty: DHCP


@dataclass(frozen=True)
class Forward:
    proto: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_port}:{self.guest_port}"


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    nat: bool = False

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)


@dataclass(frozen=True)
class Machine:
    name: str
    owner: str
    image: str = "minimal"
    memory: int = 128 << 20
    memory_min: int = 0  # 0: no floor beyond the balancer's own safety margin
    memory_weight: int = 100
    serial_lines: int = 0
    kernel_args: str = ""
    autostart: bool = True
    kernel: str = "stock"
    restart: str = "no"
    root_password_hash: str = ""
    admin_password_hash: str = ""  # seed WARDEN_ADMIN_HASH: the Debian image's user admin
    ssh_keys: tuple[str, ...] = ()  # seed WARDEN_SSH_KEYS: authorized keys of root and admin
    nics: tuple[Nic, ...] = ()
    forwards: tuple[Forward, ...] = ()
    egress: str = "allow"
    honeypot: bool = False
    tty_log: bool = False
    disguise: str = ""
    jail: bool = True
    recycle: str = ""  # "" or a warden.spec.recycle policy: on-logout, idle:D, every:D
    cpu: tuple[int, ...] = ()  # pinned host CPUs; (): warden places it (warden.cpu)
    # In a cluster (warden.cluster): the host it must run on, and labels its host must have.
    host: str = ""
    host_labels: tuple[str, ...] = ()  # "key=value" each
    spread: str = ""  # a group name: machines of one group go to different hosts first

    @property
    def recycle_policy(self) -> recyclemod.RecyclePolicy | None:
        return recyclemod.parse(self.recycle)

    @property
    def lines(self) -> tuple[str, ...]:
        return ("con0",) + tuple(f"ssl{i}" for i in range(self.serial_lines))


@dataclass(frozen=True)
class Host:
    memory_budget: int = 0  # 0: host MemTotal minus memory_reserve
    memory_reserve: int = 1 << 30
    netns: str = ""
    uid_base: int = 200000
    uid_count: int = 65536
    balance_interval: float = 1.0
    balance_watch: float = 0.1  # headroom checks between intervals; 0: none (docs: Memory)
    boot_slots: int = 0  # guests booting at once; 0: from the host's free CPUs (daemon/admission)
    # Free space kept in WARDEN_HOME for the guests' COW growth (warden.storage.policy): the
    # larger of the two; both 0: max(1 GiB, 2%), at most 1/8 of the filesystem.
    home_floor: int = 0
    home_floor_percent: float = 0.0


@dataclass(frozen=True)
class Concentrator:
    listen: str = ""  # "" : no SSH concentrator
    idle_timeout: int = 1800

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Web:
    """The web console (warden.web): off when `listen` is empty."""

    listen: str = ""  # "" : no web console
    url: str = ""  # the address browsers use (login links); default: from listen
    cert: str = ""  # PEM certificate chain; "" : warden makes one in WARDEN_HOME/keys
    key: str = ""  # its PEM private key
    insecure_http: bool = False  # plain HTTP: loopback listen addresses only
    idle_timeout: int = 900  # seconds without a request before a login session ends

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"


@dataclass(frozen=True)
class Cluster:
    """[cluster]: what every host of a cluster shares (docs/formats/cluster.md)."""

    storage: str = ""  # a directory every host reaches at this path: COW disks, their locks


@dataclass(frozen=True)
class Logs:
    quota: int = 64 << 20  # per guest, all of its session logs together
    enabled: bool = True  # false: no session logs (consoles still work)


@dataclass(frozen=True)
class Fleet:
    source: str
    host: Host = field(default_factory=Host)
    concentrator: Concentrator = field(default_factory=Concentrator)
    web: Web = field(default_factory=Web)
    logs: Logs = field(default_factory=Logs)
    cluster: Cluster = field(default_factory=Cluster)
    owners: tuple[Owner, ...] = ()
    networks: tuple[Network, ...] = ()
    machines: tuple[Machine, ...] = ()  # a pool's guests among them (warden.spec.pool)
    pools: "tuple[Pool, ...]" = ()

    def owner(self, name: str) -> Owner | None:
        return next((o for o in self.owners if o.name == name), None)

    def machine(self, name: str) -> Machine | None:
        return next((m for m in self.machines if m.name == name), None)


# ---- validation -------------------------------------------------------------------------

Check = Callable[[Any], Any]  # returns the converted value or raises ValueError(what is allowed)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _size(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise ValueError(f"expected {SIZE_HELP}")
    try:
        return parse_size(v)
    except ValueError:
        raise ValueError(f"expected {SIZE_HELP}") from None


def _int_range(lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}")
        return v

    return check


def _positive_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ValueError("expected a number greater than 0")
    return float(v)


def _number_range(lo: float, hi: float) -> Check:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}")
        return float(v)

    return check


def _choice(*allowed: str) -> Check:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError("expected one of " + ", ".join(repr(a) for a in allowed))
        return str(v)

    return check


def _pattern(rx: re.Pattern[str], what: str) -> Check:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not rx.fullmatch(v):
            raise ValueError(f"expected {what}")
        return v

    return check


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


def _ssh_keys(v: Any) -> tuple[str, ...]:
    keys = _str_list(v)
    for k in keys:
        if any(not c.isprintable() for c in k):
            raise ValueError(
                "expected one OpenSSH public key per string, without line breaks or control "
                f"characters; got {k[:40]!r}"
            )
        parts = k.split()
        if len(parts) < 2 or not (parts[0].startswith("ssh-") or parts[0].startswith("ecdsa-")):
            raise ValueError('expected OpenSSH public keys such as "ssh-ed25519 AAAA... user@host"')
    return keys


def _kernel_args(v: Any) -> str:
    """Extra kernel parameters: words the kernel cannot re-split, none that warden sets or that
    reaches the host (warden.uml.cmdline.RESERVED; init= is checked with the machine)."""
    text = _str(v)
    problems = []
    for token in cmdline.split_kernel_args(text):
        why = cmdline.reserved(token)
        if why is not None:
            problems.append(f"{cmdline.param_name(token)!r} is not allowed: {why}")
    if problems:
        raise ValueError("; ".join(problems))
    return text


def _listen(v: Any) -> str:
    if not isinstance(v, str) or ":" not in v:
        raise ValueError('expected "ADDRESS:PORT", e.g. "127.0.0.1:2222"')
    host, _, port = v.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('expected "ADDRESS:PORT" with a port from 0 to 65535')
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError('expected a numeric address, e.g. "127.0.0.1:2222"') from None
    return v


def _subnet(v: Any) -> str:
    try:
        net = ipaddress.IPv4Network(_str(v), strict=True)
    except ValueError:
        raise ValueError('expected an IPv4 subnet such as "10.77.0.0/24"') from None
    if net.prefixlen > 29:
        raise ValueError("expected a subnet of at least /29 (the host takes .1)")
    return str(net)


def _egress(v: Any) -> str:
    if v in ("allow", "deny") or (isinstance(v, str) and EGRESS_RATE.fullmatch(v)):
        return str(v)
    raise ValueError('expected "allow", "deny" or a rate such as "20/second"')


HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
LABEL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}=[A-Za-z0-9_.-]{0,63}$")


def _absolute_dir(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise ValueError("expected an absolute path (every host reaches it at the same path)")
    return s


def _labels(v: Any) -> tuple[str, ...]:
    items = _str_list(v)
    for item in items:
        if not LABEL.match(item):
            raise ValueError(f"{item!r} is not a label: expected \"key=value\" (e.g. \"zone=a\")")
    return items


def _recycle(v: Any) -> str:
    recyclemod.parse(_str(v))  # ValueError says what is allowed
    return str(v)


def _forwards(v: Any) -> tuple[Forward, ...]:
    out = []
    for item in _str_list(v):
        m = FORWARD.fullmatch(item)
        if not m or not (0 < int(m[2]) < 65536 and 0 < int(m[3]) < 65536):
            raise ValueError(f'{item!r}: expected "tcp:HOSTPORT:GUESTPORT" or "udp:..."')
        out.append(Forward(m[1], int(m[2]), int(m[3])))
    return tuple(out)


MAX_CPU = 8191


def _cpu(v: Any) -> tuple[int, ...]:
    """`cpu = 1` or `cpu = [0, 1]`: the host CPUs a guest is pinned to. Whether this host has
    them is checked when the fleet is applied (warden.cpu.feature), where the host is known."""
    allowed = "expected a CPU number (cpu = 1) or a list of distinct CPU numbers (cpu = [0, 1])"
    items = v if isinstance(v, list) else [v]
    if not items:
        raise ValueError(allowed)
    for c in items:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CPU:
            raise ValueError(allowed)
    if len(set(items)) != len(items):
        raise ValueError(f"{allowed}; a CPU is listed twice")
    return tuple(sorted(items))


def _nics(v: Any) -> tuple[Nic, ...]:
    if not isinstance(v, list):
        raise ValueError('expected a list of tables like { network = "lan0", ip = "10.77.0.10" }')
    out = []
    for item in v:
        if not isinstance(item, dict) or set(item) - {"network", "ip"} or "network" not in item:
            raise ValueError('each NIC is { network = "NAME", ip = "ADDRESS" } (ip optional)')
        ip = item.get("ip", "")
        if ip:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise ValueError(f"NIC ip {ip!r} is not an IPv4 address") from None
        out.append(Nic(network=_str(item["network"]), ip=ip))
    return tuple(out)


HOST_FIELDS: dict[str, Check] = {
    "memory_budget": _size,
    "memory_reserve": _size,
    "netns": _pattern(NETNS_NAME, "a network namespace name"),
    "uid_base": _int_range(1000, 2**31 - 70000),
    "uid_count": _int_range(1, 65536),
    "balance_interval": _positive_number,
    "balance_watch": _number_range(0.0, 10.0),
    "boot_slots": _int_range(0, 10000),
    "home_floor": _size,
    "home_floor_percent": _number_range(0.0, 50.0),
}
CONCENTRATOR_FIELDS: dict[str, Check] = {
    "listen": _listen,
    "idle_timeout": _int_range(0, 7 * 86400),
}


def _url(v: Any) -> str:
    """The web console's address as browsers use it: scheme, host and optional port only."""
    text = _str(v)
    m = WEB_URL.fullmatch(text)
    if not m:
        raise ValueError(
            'expected "https://HOST[:PORT]" (no path), e.g. "https://warden.example:8443"'
        )
    if m["port"] and not 0 < int(m["port"]) < 65536:
        raise ValueError("expected a port from 1 to 65535")
    return text


def _pem_path(v: Any) -> str:
    text = _str(v)
    if not text.startswith("/"):
        raise ValueError("expected an absolute path to a PEM file")
    return text


WEB_FIELDS: dict[str, Check] = {
    "listen": _listen,
    "url": _url,
    "cert": _pem_path,
    "key": _pem_path,
    "insecure_http": _bool,
    "idle_timeout": _int_range(60, 7 * 86400),
}
LOGS_FIELDS: dict[str, Check] = {"quota": _size, "enabled": _bool}
CLUSTER_FIELDS: dict[str, Check] = {"storage": _absolute_dir}
OWNER_FIELDS: dict[str, Check] = {
    "name": _pattern(OWNER_NAME, "a lower-case name of up to 32 characters"),
    "keys": _ssh_keys,
    "password_hash": _pattern(CRYPT_HASH, "a crypt(3) hash ($1$, $5$ or $6$)"),
    "admin": _bool,
}
NETWORK_FIELDS: dict[str, Check] = {
    "name": _pattern(NETWORK_NAME, "a short lower-case name"),
    "subnet": _subnet,
    "nat": _bool,
}
MACHINE_FIELDS: dict[str, Check] = {
    "name": _pattern(MACHINE_NAME, "lower-case letters, digits and '-', at most 31"),
    "owner": _str,
    "image": _str,
    "memory": _size,
    "memory_min": _size,
    "memory_weight": _int_range(1, 10000),
    "serial_lines": _int_range(0, MAX_SERIAL_LINES),
    "kernel_args": _kernel_args,
    "autostart": _bool,
    "kernel": _str,
    "restart": _choice(*RESTART_POLICIES),
    "root_password_hash": _pattern(CRYPT_HASH, "a crypt(3) hash ($1$, $5$ or $6$)"),
    "admin_password_hash": _pattern(CRYPT_HASH, "a crypt(3) hash ($1$, $5$ or $6$)"),
    "ssh_keys": _ssh_keys,
    "nics": _nics,
    "forwards": _forwards,
    "egress": _egress,
    "honeypot": _bool,
    "tty_log": _bool,
    "disguise": _str,
    "jail": _bool,
    "recycle": _recycle,
    "cpu": _cpu,
    "host": _pattern(HOST_NAME, "a host name: lower-case letters, digits, '-' and '.'"),
    "host_labels": _labels,
    "spread": _pattern(NETWORK_NAME, "a short lower-case group name"),
}
TOP_LEVEL = (
    "host",
    "concentrator",
    "web",
    "logs",
    "cluster",
    "owner",
    "network",
    "machine",
    "pool",
)
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
