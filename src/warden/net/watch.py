"""The processes the network service runs in the namespace: a dnsmasq per network ("dns:NET")
and always-on captures of honeypot guests ("cap:MACHINE:NIC").

Each is kept in state.json's `procs` as {"pid", "start"} (warden.proc: a pid plus its start
time names one process across daemon restarts), watched by a pidfd on the event loop while the
daemon runs, and stopped with SIGTERM, then SIGKILL after STOP_GRACE. The waits run off the loop.
"""

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Callable
from typing import Any

from warden import proc

STOP_GRACE = 5.0

Procs = dict[str, dict[str, Any]]  # key -> {"pid", "start", ...}: State.procs


def alive(p: dict[str, Any] | None) -> bool:
    """A process we started still runs: its pid, started when we saw it start (an entry
    without a start time cannot be told from a reused pid: not ours)."""
    return p is not None and p.get("start") is not None and proc.running(int(p["pid"]), p["start"])


def wait_fd(fd: int, timeout: float) -> bool:
    """Block until `fd` (a pidfd: the process ended) is readable or `timeout` passed."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


class Watch:
    """pidfds of the processes being watched; `exited(key)` is called on the loop when one
    ends (the entry is still in `procs`: the caller decides what follows)."""

    def __init__(self, exited: Callable[[str], None]):
        self._pidfds: dict[str, int] = {}
        self.exited = exited

    def adopt(self, procs: Procs, key: str, res: dict[str, Any], fds: list[int]) -> None:
        """A process the helper just started: keep its pid and watch its pidfd (fds[0])."""
        procs[key] = {"pid": res["pid"], "start": res["start"]}
        self.unwatch(key)
        self._watch(key, fds[0])
        for fd in fds[1:]:
            os.close(fd)

    def watch_existing(self, procs: Procs, key: str) -> None:
        """One a previous daemon started: watched again if it is still the same process."""
        if key in self._pidfds:
            return
        p = procs[key]
        try:
            fd = os.pidfd_open(int(p["pid"]))
        except ProcessLookupError:
            return
        if proc.start_time(int(p["pid"])) != p.get("start"):
            os.close(fd)
            return
        self._watch(key, fd)

    def _watch(self, key: str, pidfd: int) -> None:
        self._pidfds[key] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._ended, key)

    def _ended(self, key: str) -> None:
        self.unwatch(key)
        self.exited(key)

    def unwatch(self, key: str) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def unwatch_all(self) -> None:
        for key in list(self._pidfds):
            self.unwatch(key)

    async def stop(self, procs: Procs, key: str) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE, a process we started (by pidfd)."""
        self.unwatch(key)
        p = procs.pop(key, None)
        if p is None or not alive(p):
            return
        try:
            fd = os.pidfd_open(int(p["pid"]))
        except ProcessLookupError:
            return
        try:
            if proc.start_time(int(p["pid"])) != p.get("start"):
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, wait_fd, fd, STOP_GRACE):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                await loop.run_in_executor(None, wait_fd, fd, STOP_GRACE)
        finally:
            os.close(fd)

    def stop_prefix(self, procs: Procs, prefix: str) -> None:
        """SIGTERM (without waiting) every process whose key starts with `prefix`."""
        for key in [k for k in procs if k.startswith(prefix)]:
            self.unwatch(key)
            p = procs.pop(key)
            if alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(p["pid"]), signal.SIGTERM)
