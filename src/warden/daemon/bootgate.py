"""Boot slots for the supervisors: the thin driver of daemon/admission.py.

A supervisor's launch asks `admit` first; a boot that must wait says why (the Queued event its
state machine turns into the `waiting` reason `warden ls` shows) and sleeps until the policy
names it, or until it is called off (`leave` of a waiting boot: stopped or killed). `up` says
the kernel is up: the slot is given back once the guest's CPU use settles (its cgroup's
cpu.stat, read here) or its boot ends or fails (`leave`).

While boots are running or waiting, a task reads once a `interval` how much CPU the rest of
the host used (the busy time of every CPU in /proc/stat minus what warden's guests used, read
from the instance's cgroup cpu.stat, which sums every guest of this home, and minus the
daemon's own and its reaped children's), off the loop, and
the policy adjusts the limit. The task ends when nothing boots or waits, and a boot that must
wait starts it again.
"""

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from warden.daemon.admission import Admission, Settings
from warden.host.cpuset import busy_per_cpu, group_usage_usec
from warden.tasks import spawn

INTERVAL = 1.0


class BootGate:
    def __init__(
        self,
        cpus: int,
        instance_group: Path,
        interval: float = INTERVAL,
        settings: Settings | None = None,
        fixed: Callable[[], int] = lambda: 0,
    ):
        self.policy = Admission(cpus, settings or Settings())
        self.interval = interval
        self._group = instance_group  # warden-INSTANCE in the v2 tree
        self._fixed = fixed  # the fleet's [host] boot_slots, read at each boot
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, float, float] | None = None  # busy s, guests s, monotonic
        self._settle: dict[str, tuple[Path, float | None, float]] = {}  # group, cpu s, at

    async def admit(self, name: str, queued: Callable[[str], None]) -> bool:
        """True when `name` may boot (at once, or after waiting its turn); False when the
        boot was called off while it waited. `queued(reason)` is called once if it waits."""
        self._wake(self.policy.set_fixed(self._fixed()))
        if self.policy.request(name, time.monotonic()):
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[name] = fut
        queued(self.policy.reason(name))
        self._ensure_task()
        return await fut

    def up(self, name: str, group: Path) -> None:
        """The kernel of `name` is up; `group` is its v2 cgroup (for its CPU use)."""
        if name in self.policy.settling() or self.policy.position(name) is not None:
            return
        self.policy.up(name, time.monotonic())
        if name in self.policy.settling():
            self._settle[name] = (group, None, 0.0)
            self._ensure_task()

    def leave(self, name: str) -> None:
        """The boot of `name` is over, or called off before its turn (idempotent)."""
        self._settle.pop(name, None)
        fut = self._waiters.pop(name, None)
        if fut is not None and not fut.done():
            fut.set_result(False)
        self._wake(self.policy.done(name))

    def waiting(self, name: str) -> str:
        return self.policy.reason(name)

    def _wake(self, names: list[str]) -> None:
        for name in names:
            fut = self._waiters.pop(name, None)
            if fut is not None and not fut.done():
                fut.set_result(True)

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._last = None
            self._task = spawn(self._loop(), "boot-admission")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(False)
        self._waiters.clear()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.policy.booting or self.policy.queued():
            await asyncio.sleep(self.interval)
            other, rates = await loop.run_in_executor(None, self._read)
            self._wake(self.policy.observe(other, rates, time.monotonic()))
            for name in list(self._settle):
                if name not in self.policy.settling():
                    del self._settle[name]

    def _read(self) -> tuple[float, dict[str, float]]:
        """Off the loop: the other work's CPUs (0 the first time), and the CPU share of each
        guest that is up and not settled since the last look (none the first time)."""
        rates: dict[str, float] = {}
        now = time.monotonic()
        for name, (group, last, at) in list(self._settle.items()):
            used = _usage_s(group)
            if used is None:
                continue
            if last is not None and now > at:
                rates[name] = (used - last) / (now - at)
            self._settle[name] = (group, used, now)
        other = self._other_busy()
        return (other if other is not None else self.policy.other), rates

    def _other_busy(self) -> float | None:
        """CPUs the host used besides warden's own boots since the last call (None the first):
        warden's are its guests (their cgroups) and the daemon with the children it reaped (the
        jail's launchers and emptiers, a boot's share of work done on the host's side)."""
        with open("/proc/stat") as f:
            busy = sum(busy_per_cpu(f.read()).values()) / os.sysconf("SC_CLK_TCK")
        guests = _usage_s(self._group) or 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            guests += ru.ru_utime + ru.ru_stime
        now = time.monotonic()
        last, self._last = self._last, (busy, guests, now)
        if last is None or now <= last[2]:
            return None
        return ((busy - last[0]) - (guests - last[1])) / (now - last[2])


def _usage_s(group: Path) -> float | None:
    used = group_usage_usec(group)
    return used / 1e6 if used is not None else None
