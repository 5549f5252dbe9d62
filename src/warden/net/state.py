"""What warden built in the network namespace, kept in WARDEN_HOME/net/state.json.

A new daemon needs it to find its networks, helper processes and the guests it wired before:
guests outlive the daemon, and so do their taps, rules, dnsmasq and captures. The file is
rewritten whole (warden.statefile), so a crash leaves the old or the new version, never a
mix. `version` changes when the meaning of a field changes.

    version     1
    netns       {"name": str, "created": bool}: the namespace in use ("" = the host's own);
                created: warden made it and removes it when the last network goes
    networks    name -> {"subnet", "nat", "hosts": [[mac, ip, name]...]}: built networks
    addresses   machine -> [ip per NIC]   (fleet addresses and warden's choices)
    marks       machine -> mark index
    cut         [machine...]              (cut stays until `warden net restore`)
    live        machine -> GuestPlan as JSON: what is in the ruleset for a running guest
    procs       key -> {"pid", "start", "argv0"}: dnsmasq ("dns:NET") and always-on captures
                ("cap:MACHINE:NIC"), found again by pid + start time
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from warden import statefile
from warden.net.plan import ForwardPlan, GuestPlan, NicPlan

VERSION = 1


@dataclass
class State:
    netns: dict[str, Any] = field(default_factory=lambda: {"name": "", "created": False})
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    cut: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    procs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def live_guests(self) -> list[GuestPlan]:
        return [guest_from_json(v) for _, v in sorted(self.live.items())]


def guest_to_json(g: GuestPlan) -> dict[str, Any]:
    return asdict(g)


def guest_from_json(raw: dict[str, Any]) -> GuestPlan:
    return GuestPlan(
        name=raw["name"],
        mark=int(raw["mark"]),
        nics=tuple(NicPlan(**n) for n in raw["nics"]),
        forwards=tuple(ForwardPlan(**f) for f in raw["forwards"]),
        egress=raw["egress"],
    )


def load(path: Path) -> State:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    if raw.get("version") != VERSION:
        raise ValueError(f"{path}: state version {raw.get('version')!r}, expected {VERSION}")
    raw.pop("version")
    return State(**raw)


def save(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": VERSION, **asdict(state)}
    statefile.write_json(path, doc, mode=0o644, indent=1, sort_keys=True)
