"""Names and numbers warden gives to what it builds in a network namespace (pure).

Linux limits interface names to 15 bytes (IFNAMSIZ - 1); network names are at most 11
characters (spec/fleet.py), so bridges keep a readable name. A tap is named after its guest
when that fits and after a hash of the guest's name otherwise. Each interface also carries an
alias (IFLA_IFALIAS) saying which warden home built it for what: warden never deletes or reuses
an interface whose alias is not its own.
"""

import hashlib

IFNAMSIZ = 15
TABLE = "warden"  # in both the ip and the bridge family
RULESET_VERSION = 1
MARK_BASE = 0x57000000  # packet marks of guests: MARK_BASE | index (index < 2**20)
MARK_MAX_INDEX = (1 << 20) - 1


def bridge(network: str) -> str:
    return f"wb-{network}"


def tap(machine: str, nic: int) -> str:
    name = f"wt-{machine}-{nic}"
    if len(name) <= IFNAMSIZ:
        return name
    return f"wx-{hashlib.sha256(machine.encode()).hexdigest()[:8]}-{nic}"


def bridge_alias(instance: str, network: str) -> str:
    return f"warden:{instance}:net:{network}"


def tap_alias(instance: str, machine: str, nic: int) -> str:
    return f"warden:{instance}:nic:{machine}:{nic}"


def alias_prefix(instance: str) -> str:
    return f"warden:{instance}:"


def mac(instance: str, machine: str, nic: int) -> str:
    """A stable, locally administered unicast MAC (02:...) for a guest's NIC."""
    digest = hashlib.sha256(f"{instance}/{machine}/{nic}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def mark(index: int) -> int:
    if not 0 < index <= MARK_MAX_INDEX:
        raise ValueError(f"mark index {index} out of range")
    return MARK_BASE | index


def owner_chain(instance: str) -> str:
    """An empty chain in warden's tables whose name says which home and ruleset built them."""
    return f"owner-{instance}-v{RULESET_VERSION}"


def guest_chain(machine: str) -> str:
    return f"g-{machine}"


def port_chain(tap_name: str) -> str:
    return f"p-{tap_name}"


def network_cgroup(network: str) -> str:
    """The cgroup (under warden-INSTANCE/) of a network's dnsmasq; '.' never starts a guest's."""
    return f"net.{network}"


def capture_cgroup(machine: str) -> str:
    return f"cap.{machine}"
