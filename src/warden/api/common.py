"""What the API's handlers share: their context, the request body and arguments, the peer."""

import json
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from warden.console.feature import ConsoleFeature
from warden.daemon.core import Daemon
from warden.errors import SpecError
from warden.forensics.feature import ForensicsFeature
from warden.honeypot.feature import HoneypotFeature
from warden.jail.feature import JailFeature
from warden.memory.feature import MemoryFeature
from warden.net.feature import NetFeature
from warden.snapshots.feature import SnapshotFeature
from warden.web.server import WebServer


@dataclass(frozen=True)
class Features:
    """The features whose methods the API serves (built by warden.app.compose)."""

    console: ConsoleFeature
    jail: JailFeature
    net: NetFeature
    memory: MemoryFeature
    honeypot: HoneypotFeature
    snapshots: SnapshotFeature
    forensics: ForensicsFeature
    web: WebServer  # the web console (a front end; warden.app.web puts it on the seam)


@dataclass(frozen=True)
class Ctx:
    """What every handler gets besides its request."""

    daemon: Daemon
    features: Features


async def body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} without a body); SpecError if it is not one."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except json.JSONDecodeError:
        raise SpecError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise SpecError("request body must be a JSON object")
    return data


def int_arg(request: web.Request, key: str, default: int | None) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SpecError(f"{key}={raw!r}: expected a whole number") from None
    if value < 0:
        raise SpecError(f"{key}={raw!r}: expected a number >= 0")
    return value


def float_arg(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(f"{key}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise SpecError(f"{key}={raw!r}: expected a number of seconds > 0")
    return value


def peer_user(request: web.Request) -> str:
    """The local user on the other end of the UNIX socket (SO_PEERCRED)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return "unknown"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return "unknown"


def client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()
