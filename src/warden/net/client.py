"""The daemon's side of the network helper (agent.py): start it, call it, stop it.

Calls are blocking and serialised by a lock; async callers use `acall`, which runs the call on
the client's own thread (not the loop's shared executor, where a cut could wait behind other
features' slow work). A call that hands back file descriptors returns them to the caller, who
owns (and must close) them.
"""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from warden.net.agent import MAX_MESSAGE
from warden.net.errors import NetError

CALL_TIMEOUT = 60.0
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; Python 3.11 lacks them
START_TIMEOUT = 60.0


class AgentClient:
    def __init__(self, netns: str, create: bool, log: Path):
        self.netns = netns
        self.create = create
        self.log = log
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.hello: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="net-agent")

    @property
    def where(self) -> str:
        return f"network namespace {self.netns!r}" if self.netns else "the host's network"

    def start(self) -> "AgentClient":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            for opt in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, opt, MAX_MESSAGE)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "warden.net.agent",
                    str(theirs.fileno()),
                    self.netns,
                    "1" if self.create else "0",
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        finally:
            logf.close()
            theirs.close()
        self.sock = ours
        try:
            self.hello = self._receive(START_TIMEOUT)[0]
        except NetError as e:
            self.close()
            raise NetError(f"the network helper for {self.where} did not start: {e}") from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.sock is not None

    def _receive(self, timeout: float) -> tuple[Any, list[int]]:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except TimeoutError:
            raise NetError(f"the network helper for {self.where} did not answer") from None
        except OSError as e:
            raise NetError(f"the network helper for {self.where} is gone: {e}") from None
        if not msg:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise NetError(f"the network helper for {self.where} exited: {tail.strip()}")
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise NetError(reply["error"])
        return reply["ok"], fds

    def call_fds(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        with self._lock:
            if not self.alive():
                raise NetError(f"the network helper for {self.where} is not running")
            assert self.sock is not None
            socket.send_fds(self.sock, [json.dumps({"op": op, **args}).encode()], [])
            return self._receive(CALL_TIMEOUT)

    def call(self, op: str, **args: Any) -> Any:
        result, fds = self.call_fds(op, **args)
        for fd in fds:
            os.close(fd)
        return result

    async def acall(self, op: str, **args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: self.call(op, **args))

    async def acall_fds(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: self.call_fds(op, **args))

    def close(self) -> None:
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            if self.proc is not None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.proc = None
        self._thread.shutdown(wait=False)
