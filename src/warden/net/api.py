"""The networking routes of the daemon's API (served under /v1/ by api/server.py).

GET  /net                       networks and guests' NICs (warden net ls)
POST /net/{name}/cut            drop every frame to and from the guest, at once
POST /net/{name}/restore        undo cut
GET  /net/{name}/capture?nic=N&count=N&duration=S
                                a pcap stream (application/vnd.tcpdump.pcap) of every
                                frame of the guest's tap, from the host side; it ends after
                                `count` packets, `duration` seconds, or when the client
                                goes away. The response starts once tcpdump is listening.
"""

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from aiohttp import web

from warden.errors import SpecError
from warden.net.service import NetService, _wait_fd

if TYPE_CHECKING:
    from warden.daemon.core import Daemon

CHUNK = 1 << 16


def _int_arg(request: web.Request, key: str, default: int | None) -> int | None:
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


def _float_arg(request: web.Request, key: str) -> float | None:
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


class NetApi:
    def __init__(self, service: NetService):
        self.service = service

    def install(self, daemon: "Daemon") -> None:
        daemon.add_route("GET", "net", self.ls)
        daemon.add_route("POST", "net/{name}/cut", self.cut)
        daemon.add_route("POST", "net/{name}/restore", self.restore)
        daemon.add_route("GET", "net/{name}/capture", self.capture)

    async def ls(self, request: web.Request) -> web.Response:
        return web.json_response(await self.service.ls())

    async def cut(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        out = await self.service.set_cut(request.match_info["name"], True)
        out["seconds"] = time.monotonic() - t0
        return web.json_response(out)

    async def restore(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        out = await self.service.set_cut(request.match_info["name"], False)
        out["seconds"] = time.monotonic() - t0
        return web.json_response(out)

    async def capture(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        nic = _int_arg(request, "nic", 0) or 0
        count = _int_arg(request, "count", None)
        duration = _float_arg(request, "duration")
        tap, pidfd, pipe, info = await self.service.open_capture(name, nic, count or None)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK * 4)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(pipe, "rb", buffering=0)
        )
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.tcpdump.pcap",
                "X-Warden-Tap": tap,
                "X-Warden-Capture-Pid": str(info["pid"]),
            }
        )
        stopped = False

        def stop(sig: int) -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, sig)

        deadline = time.monotonic() + duration if duration else None
        try:
            await resp.prepare(request)
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    stop(signal.SIGINT)  # tcpdump flushes whole packets and exits: EOF
                gone = request.transport is None or request.transport.is_closing()
                if gone:
                    stop(signal.SIGTERM)
                    break
                try:
                    data = await asyncio.wait_for(reader.read(CHUNK), 0.25)
                except TimeoutError:
                    continue
                if not data:
                    break
                await resp.write(data)
            if not (request.transport is None or request.transport.is_closing()):
                await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            stop(signal.SIGTERM)
            raise
        finally:
            stop(signal.SIGTERM)
            transport.close()
            await loop.run_in_executor(None, _wait_fd, pidfd, 5.0)
            os.close(pidfd)
            self.service.close_capture(name)
        return resp
