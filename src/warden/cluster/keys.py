"""The keys warden keeps in etcd and their values (docs/formats/cluster.md, in code).

Values are JSON objects; `decode` is the one bounded reader: a value too large, not JSON, not
an object or without a field raises ClusterFormatError naming the key, and callers treat the
key as absent.
"""

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from warden.errors import WardenError

PREFIX = "/warden/"
HOSTS = PREFIX + "hosts/"
FLEET = PREFIX + "fleet"
ASSIGN = PREFIX + "assign/"
OWN = PREFIX + "own/"
KNOWN = PREFIX + "known/"
DRAIN = PREFIX + "drain/"
MOVE = PREFIX + "move/"
LEADER = PREFIX + "leader"

MAX_VALUE = 4096
MAX_FLEET = 1 << 20
HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class ClusterFormatError(WardenError):
    """A value in etcd that is not what docs/formats/cluster.md says."""


def decode(key: str, raw: bytes, fields: tuple[str, ...], limit: int = MAX_VALUE) -> dict[str, Any]:
    if len(raw) > limit:
        raise ClusterFormatError(f"{key}: {len(raw)} bytes, more than {limit}")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClusterFormatError(f"{key}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ClusterFormatError(f"{key}: expected a JSON object")
    missing = [f for f in fields if f not in value]
    if missing:
        raise ClusterFormatError(f"{key}: lacks {', '.join(missing)}")
    return value


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def check_host_name(name: str) -> str:
    if not HOST_NAME.match(name):
        raise WardenError(
            f"host name {name!r}: expected lower-case letters, digits, '-' and '.' (at most 63)"
        )
    return name


@dataclass(frozen=True)
class HostInfo:
    name: str
    budget: int
    free: int
    labels: dict[str, str] = field(default_factory=dict)
    ttl: int = 10
    pid: int = 0

    def to_bytes(self) -> bytes:
        return encode(asdict(self))

    @classmethod
    def from_bytes(cls, key: str, raw: bytes) -> "HostInfo":
        v = decode(key, raw, ("name", "budget", "free"))
        labels = v.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in labels.items()
        ):
            raise ClusterFormatError(f"{key}: labels must map strings to strings")
        try:
            return cls(
                name=check_host_name(str(v["name"])),
                budget=int(v["budget"]),
                free=int(v["free"]),
                labels=dict(labels),
                ttl=int(v.get("ttl", 10)),
                pid=int(v.get("pid", 0)),
            )
        except (TypeError, ValueError, WardenError) as e:
            raise ClusterFormatError(f"{key}: {e}") from None


@dataclass(frozen=True)
class Assignment:
    host: str
    rev: int
    why: str

    def to_bytes(self) -> bytes:
        return encode(asdict(self))

    @classmethod
    def from_bytes(cls, key: str, raw: bytes) -> "Assignment":
        v = decode(key, raw, ("host", "rev", "why"))
        try:
            return cls(host=check_host_name(str(v["host"])), rev=int(v["rev"]), why=str(v["why"]))
        except (TypeError, ValueError, WardenError) as e:
            raise ClusterFormatError(f"{key}: {e}") from None


@dataclass(frozen=True)
class Owner:
    host: str
    state: str
    since: float

    def to_bytes(self) -> bytes:
        return encode(asdict(self))

    @classmethod
    def from_bytes(cls, key: str, raw: bytes) -> "Owner":
        v = decode(key, raw, ("host", "state", "since"))
        try:
            return cls(
                host=check_host_name(str(v["host"])), state=str(v["state"]), since=float(v["since"])
            )
        except (TypeError, ValueError, WardenError) as e:
            raise ClusterFormatError(f"{key}: {e}") from None


def fleet_from_bytes(raw: bytes) -> tuple[str, str]:
    v = decode(FLEET, raw, ("text", "source"), MAX_FLEET)
    return str(v["text"]), str(v["source"])


def target_from_bytes(key: str, raw: bytes) -> str:
    """A move request's target host."""
    v = decode(key, raw, ("host",))
    try:
        return check_host_name(str(v["host"]))
    except WardenError as e:
        raise ClusterFormatError(f"{key}: {e}") from None
