"""What a principal may see and do in the web console, and the rows its pages show: sans-io.

The rule is the concentrator's (warden.console.access.reachable): an owner sees the guests
she owns, an administrator sees every guest. Every page, JSON route, event stream and
websocket asks `may_see` first, and a guest someone may not see gets exactly the answer of a
guest that does not exist (NOT_FOUND): names cannot be probed.

The daemon's own words can name other guests (a start refused for memory lists the floors of
the guests running; an event of one guest can quote another): what an owner gets of them (an
error, an event, a timeline) passes `redact`, which writes every guest name she may not see
as HIDDEN.
"""

import re
from collections.abc import Iterable, Mapping
from typing import Any

from warden.spec.fleet import Fleet, Machine
from warden.web.auth import Principal

NOT_FOUND = "no such guest"
ACTIONS = ("start", "stop", "kill", "reset")
# What each action needs the guest to be (the daemon refuses the rest with a Conflict too; the
# page only offers what would work).
ACTION_STATES = {
    "start": ("absent", "stopped", "crashed"),
    "stop": ("starting", "running", "paused"),
    "kill": ("starting", "running", "stopping", "paused"),
    "reset": ("stopped", "crashed"),
}
HIDDEN = "another guest"  # what the name of a guest someone may not see becomes in messages


def visible(fleet: Fleet, p: Principal) -> list[Machine]:
    return [m for m in fleet.machines if p.admin or m.owner == p.user]


def may_see(fleet: Fleet, p: Principal, name: str) -> bool:
    m = fleet.machine(name)
    return m is not None and (p.admin or m.owner == p.user)


def actions_for(state: str) -> list[str]:
    return [a for a in ACTIONS if state in ACTION_STATES[a]]


def may_receive(fleet: Fleet, p: Principal, event: Mapping[str, Any]) -> bool:
    """Whether an event of the daemon's bus may reach this principal's browser."""
    machine = event.get("machine")
    if machine is None:
        return p.admin  # fleet-wide events (fleet-applied lists every guest's name)
    return isinstance(machine, str) and may_see(fleet, p, machine)


def guest_row(
    spec: Machine,
    info: Mapping[str, Any] | None,
    memory: Mapping[str, Any] | None,
    attached: int,
) -> dict[str, Any]:
    """One guest as the fleet page shows it. `info` is the supervisor's (warden ls), `memory`
    the balancer's row for it (warden top; None when it is not running)."""
    state = str(info.get("state", "absent")) if info is not None else "absent"
    row: dict[str, Any] = {
        "name": spec.name,
        "owner": spec.owner,
        "state": state,
        "uptime": info.get("uptime") if info is not None else None,
        "boot": info.get("boot", 0) if info is not None else 0,
        "memory": spec.memory,
        "plugged": None,
        "used": None,
        "lines": list(spec.lines),
        "honeypot": spec.honeypot,
        "image": spec.image,
        "sessions": attached,
        "actions": actions_for(state),
    }
    if memory is not None:
        row["plugged"] = memory.get("plugged")
        used = memory.get("used")
        # The balancer's `used` is in bytes like `plugged`; a guest not read yet has none.
        row["used"] = used if isinstance(used, int) else None
    return row


def fleet_rows(
    fleet: Fleet,
    p: Principal,
    infos: Mapping[str, Mapping[str, Any]],
    memory: Mapping[str, Mapping[str, Any]],
    attached: Mapping[str, int],
) -> list[dict[str, Any]]:
    return [
        guest_row(m, infos.get(m.name), memory.get(m.name), attached.get(m.name, 0))
        for m in visible(fleet, p)
    ]


def memory_by_guest(snapshot: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The balancer's snapshot (GET /v1/memory) by guest name."""
    if not snapshot:
        return {}
    guests: Iterable[Mapping[str, Any]] = snapshot.get("guests", [])
    return {str(g["name"]): g for g in guests if "name" in g}


def hidden(fleet: Fleet, p: Principal) -> list[str]:
    """The names of the guests `p` may not see."""
    return [] if p.admin else [m.name for m in fleet.machines if m.owner != p.user]


def redact(value: Any, names: list[str]) -> Any:
    """`value` (a string, or JSON made of dicts, lists and strings) with each of `names` that
    stands as a word of its own (not inside a longer guest-like name) written as HIDDEN."""
    if not names:
        return value
    pattern = re.compile(
        r"(?<![A-Za-z0-9-])(?:" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9-])"
    )
    return _redact(value, pattern)


def _redact(value: Any, pattern: "re.Pattern[str]") -> Any:
    if isinstance(value, str):
        return pattern.sub(HIDDEN, value)
    if isinstance(value, dict):
        return {_redact(k, pattern): _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, pattern) for v in value]
    return value
