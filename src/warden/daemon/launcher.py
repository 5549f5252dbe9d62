"""Starting a guest's kernel from a LaunchPlan (daemon/bootplan.py): warden.host.launch, forked
by the zygote when it runs, else a fresh Python. The answer comes on a status pipe (one JSON
line {"pid": N} or {"error": "..."}), read off the loop within LAUNCH_TIMEOUT.

`Launcher` is the seam the supervisor calls; driver tests give it a fake that starts no UML.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Protocol

from warden.errors import WardenError
from warden.host.launch import LaunchPlan
from warden.host.zygote import Zygote

log = logging.getLogger("warden.supervisor")

LAUNCH_TIMEOUT = 30.0


class Launcher(Protocol):
    async def launch(self, name: str, plan: LaunchPlan, fds: list[int]) -> int:
        """Start the kernel of guest `name`; its pid. WardenError if it could not start."""


class HostLauncher:
    def __init__(self, zygote: Callable[[], Zygote | None]):
        self.zygote = zygote

    async def launch(self, name: str, plan: LaunchPlan, fds: list[int]) -> int:
        loop = asyncio.get_running_loop()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        zygote = self.zygote()
        if zygote is not None and zygote.alive():
            try:
                zygote.spawn(plan, fds, status_w)
            except OSError as e:
                log.warning("%s: the zygote failed (%s); starting a launcher", name, e)
            else:
                os.close(status_w)
                try:
                    status = await asyncio.wait_for(
                        loop.run_in_executor(None, _read_all, status_r), LAUNCH_TIMEOUT
                    )
                finally:
                    os.close(status_r)
                return launched_pid(name, status, b"", None)
            # nothing was sent (sendmsg is all or nothing): the same pipe serves the launcher
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "warden.host.launch", str(status_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=[*fds, status_w],
                env=dict(os.environ),
            )
        finally:
            os.close(status_w)
        assert proc.stdin is not None
        proc.stdin.write(plan.to_json().encode())
        proc.stdin.close()
        try:
            status = await asyncio.wait_for(
                loop.run_in_executor(None, _read_all, status_r), LAUNCH_TIMEOUT
            )
        finally:
            os.close(status_r)
        stderr = await loop.run_in_executor(None, _reap_launcher, proc)
        return launched_pid(name, status, stderr, proc.returncode)


def launched_pid(name: str, status: bytes, stderr: bytes, code: int | None) -> int:
    """The kernel's pid from the launcher's status lines, or why there is none."""
    pid: int | None = None
    for text in status.decode(errors="replace").splitlines():
        msg = json.loads(text)
        if "error" in msg:
            raise WardenError(f"{name}: starting the kernel failed: {msg['error']}")
        pid = int(msg["pid"])
    if pid is None:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        raise WardenError(f"{name}: the launcher ended ({code}) without a pid: {tail}")
    return pid


def _reap_launcher(proc: "subprocess.Popen[bytes]") -> bytes:
    """The launcher exits right after forking the kernel: collect its stderr and status."""
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return err


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
