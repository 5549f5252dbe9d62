"""The CLI's side of the daemon API (see api/server.py for the routes).

Plain request/response calls use the standard library's http.client over the UNIX socket, so
`warden ls` starts fast; console attach uses aiohttp's websocket client.
"""

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from warden.errors import Conflict, DaemonNotRunning, NotFound, WardenError
from warden.paths import Layout


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None):
        super().__init__("warden", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(
                f"no warden daemon is running for {self.path.parent.parent} "
                f"(no answer on {self.path}); start one with `warden daemon` or `warden up FLEET`"
            ) from None
        self.sock = sock


class ApiClient:
    def __init__(self, layout: Layout, timeout: float = 300.0):
        self.layout = layout
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.layout.socket, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, "/v1" + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return _answer(resp.status, raw)

    def stream(self, path: str) -> "Streamed":
        """GET a response the daemon streams (a pcap capture), with no timeout: it lasts as
        long as the daemon sends. Errors are raised as `call` raises them; close it after."""
        conn = _UnixConnection(self.layout.socket, None)
        try:
            conn.request("GET", "/v1" + path)
            resp = conn.getresponse()
            if resp.status != 200:
                _answer(resp.status, resp.read(), plain_errors=True)
        except BaseException:
            conn.close()
            raise
        return Streamed(conn, resp)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, body if body is not None else {})


class Streamed:
    """A streamed response: `read` what has come (b"" at the end), `header`, `close`."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn = conn
        self._resp = resp

    def header(self, name: str, default: str = "") -> str:
        return self._resp.getheader(name, default)

    def read(self, size: int = 65536) -> bytes:
        return self._resp.read1(size)

    def close(self) -> None:
        self._conn.close()


def _answer(status: int, raw: bytes, plain_errors: bool = False) -> Any:
    """The JSON payload of an answer; the daemon's error message raised as WardenError (404
    NotFound, 409 Conflict) for a status >= 400 (`plain_errors`: one that is not JSON too)."""
    try:
        payload = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        if plain_errors and status >= 400:
            raise WardenError(raw.decode(errors="replace")) from None
        raise WardenError(f"daemon answered {status} with non-JSON: {raw[:200]!r}") from None
    if status >= 400:
        msg = payload.get("error", raw.decode()) if isinstance(payload, dict) else raw.decode()
        if status == 404:
            raise NotFound(msg)
        if status == 409:
            raise Conflict(msg)
        raise WardenError(msg)
    return payload
