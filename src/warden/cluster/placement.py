"""Where a machine may run, and where it goes (pure: no etcd, no clock).

Admission is the one-host check, per host: the `memory` of the guests a host holds plus the
new one's must fit the host's budget. Among the hosts that admit a machine, that are alive,
not draining, have the labels it asks for and are the host it names (if it names one), it goes
to the one with the fewest guests, then the most memory left, then the first by name (so a
placement is the same on every run). A machine of a spread group (`spread = "sensors"`: a
honeypot pool) first goes to the host with the fewest machines of its group.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Want:
    """What placement needs of one machine of the desired fleet."""

    name: str
    memory: int
    host: str = ""
    labels: tuple[str, ...] = ()  # "key=value" each
    spread: str = ""  # its group, if any


@dataclass(frozen=True)
class HostView:
    name: str
    budget: int
    labels: Mapping[str, str] = field(default_factory=dict)
    draining: bool = False


@dataclass
class Load:
    """What placement has put on one host so far."""

    memory: int = 0
    guests: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # spread group -> machines


def fits(want: Want, host: HostView) -> str | None:
    """None if `host` may run `want` regardless of load; else why not."""
    if host.draining:
        return f"{host.name} is draining"
    if want.host and want.host != host.name:
        return f"{want.name} asks for host {want.host}"
    for label in want.labels:
        key, _, value = label.partition("=")
        if host.labels.get(key) != value:
            return f"{host.name} lacks label {label}"
    return None


def admits(want: Want, host: HostView, load: Load) -> bool:
    return load.memory + want.memory <= host.budget


def choose(
    want: Want, hosts: Iterable[HostView], loads: Mapping[str, Load], exclude: str = ""
) -> tuple[str | None, str]:
    """The host for `want` (or None) and, when None, why no host fits."""
    best: tuple[int, int, int, str] | None = None
    reasons: list[str] = []
    for host in hosts:
        if host.name == exclude:
            continue
        why = fits(want, host)
        load = loads.get(host.name, Load())
        if why is None and not admits(want, host, load):
            why = (
                f"{host.name} has {(host.budget - load.memory) >> 20}M left of "
                f"{host.budget >> 20}M, {want.name} needs {want.memory >> 20}M"
            )
        if why is not None:
            reasons.append(why)
            continue
        group = load.groups.get(want.spread, 0) if want.spread else 0
        key = (group, load.guests, -(host.budget - load.memory), host.name)
        if best is None or key < best:
            best = key
    if best is None:
        return None, "; ".join(reasons) or "no host is alive"
    return best[3], ""


def add(loads: dict[str, Load], host: str, want: Want) -> None:
    load = loads.setdefault(host, Load())
    load.memory += want.memory
    load.guests += 1
    if want.spread:
        load.groups[want.spread] = load.groups.get(want.spread, 0) + 1


def remove(loads: dict[str, Load], host: str, want: Want) -> None:
    load = loads.setdefault(host, Load())
    load.memory -= want.memory
    load.guests -= 1
    if want.spread:
        load.groups[want.spread] = load.groups.get(want.spread, 0) - 1
