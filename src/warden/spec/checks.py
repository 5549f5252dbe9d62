"""The fleet file's field checks: each turns a TOML value into what a Fleet holds, or raises
ValueError saying what is allowed; and the FIELDS tables, the schema declared once as data
(spec/fleet.py validates with them; docs/fleet.md and the "did you mean" hints come from them).
"""

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from warden.spec import recycle as recyclemod
from warden.spec.model import (
    CRYPT_HASH,
    EGRESS_RATE,
    FORWARD,
    MACHINE_NAME,
    MAX_SERIAL_LINES,
    NETNS_NAME,
    NETWORK_NAME,
    OWNER_NAME,
    RESTART_POLICIES,
    WEB_URL,
    Forward,
    Nic,
)
from warden.uml import cmdline
from warden.units import SIZE_HELP, parse_size

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
            raise ValueError(f'{item!r} is not a label: expected "key=value" (e.g. "zone=a")')
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
