"""Emptying a booted guest's jail (warden.host.jail `empty`, run in a fresh process).

At "up" (the mconsole notify, sent early in the kernel's boot) the kernel has exec'd and
mapped its binary, libraries and shim, created its memory file and made its umid directory in
ctl: those go, the ctl mount included (the kernel keeps it through its working directory).
"up" comes from a device initcall (mconsole_init), and initcalls after it still use the jail:
mem_mc_init makes a test memory file in TMPDIR (UML exits with status 1, printing nothing,
when it cannot) and rng_init opens /dev/random. Those stay, with the disks (opened by path
when a block device is first opened, the seed only when the guest mounts it), until the
guest's hostname (read through the mconsole) is its name, which warden's images set just after
unmounting the seed, and the kernel holds the COW and base open; or until SEED_WAIT has
passed. By then init runs: every initcall is over. Then the rest goes and the root is
remounted read-only: it is empty, and hostfs in the guest shows an empty, read-only directory.
(Taking TMPDIR at "up" lost guests in boot storms on a loaded host, where the first step could
run before the kernel reached mem_mc_init: docs/decisions/2026-12-07-cpu-placement.md.)
"""

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import Guest
from warden.errors import MconsoleError, WardenError
from warden.jail.plan import JAIL_BASE, JAIL_COW, JAIL_SEED
from warden.uml import mconsole

log = logging.getLogger("warden.jail")

# How long a guest may take from "up" to having read its seed disk.
SEED_WAIT = 120.0
POLL = 0.2
HELPER_TIMEOUT = 30.0

Report = Callable[..., None]  # status(**fields): the jail's state for `warden jail audit`
Event = Callable[..., None]  # event(kind, **fields): the guest's event


class Emptier:
    """Takes everything out of one booted guest's jail, in two steps (see the module)."""

    def __init__(
        self, guest: Guest, status: Report, event: Event, keep_at_up: list[str] | None = None
    ):
        self.guest = guest
        # the jail plan's kept_at_up(); a guest a restarted daemon re-attached to has long
        # finished its initcalls, and only its disks wait for the seed
        self.keep_at_up = keep_at_up or [JAIL_COW, JAIL_SEED, JAIL_BASE]
        self.status = status
        self.event = event
        self.pid = guest.pid
        self.start = guest.pid_start
        self.boot = guest.boot

    def _same_boot(self) -> bool:
        g = self.guest
        return (
            g.pid == self.pid
            and g.boot == self.boot
            and g.state in (m.State.RUNNING, m.State.PAUSED, m.State.STARTING)
        )

    async def run(self) -> None:
        if self.pid is None or self.start is None:
            return
        t0 = time.monotonic()
        files = self.guest.files
        try:
            first = await self._helper(self.keep_at_up)
            self.status(state="disks", detached_at_up=first.get("detached", []))
            deadline = time.monotonic() + SEED_WAIT
            reason = "timeout"
            while time.monotonic() < deadline:
                if not self._same_boot():
                    return
                if self.guest.state is m.State.RUNNING and await self._seed_read():
                    reason = "seed read"
                    break
                await asyncio.sleep(POLL)
            if not self._same_boot():
                return
            second = await self._helper([])
            with contextlib.suppress(FileNotFoundError):
                (files.ctl / self.guest.name / "pid").unlink()  # warden never reads it
            seconds = round(time.monotonic() - t0, 3)
            self.status(
                state="empty",
                remaining=second.get("remaining", []),
                sealed=second.get("sealed", False),
                why=reason,
            )
            self.event(
                "jail-emptied",
                after=f"{seconds}s",
                why=reason,
                remaining=len(second.get("remaining", [])),
            )
        except asyncio.CancelledError:
            raise
        except (WardenError, OSError) as e:
            if self._same_boot():
                self.status(state="error", error=str(e))
                self.event("jail-empty-failed", error=str(e))
            else:
                log.debug("%s: emptying stopped, the guest is gone: %s", self.guest.name, e)

    async def _seed_read(self) -> bool:
        try:
            name = mconsole.proc_text(await self.guest.request("proc sys/kernel/hostname", 2.0))
        except (MconsoleError, WardenError):
            return False
        if name.strip() != self.guest.guest_hostname:
            return False
        return await asyncio.get_running_loop().run_in_executor(None, self._disks_held)

    def _disks_held(self) -> bool:
        """The kernel holds its COW and base open, and not its seed (the guest let it go)."""
        files = self.guest.files
        want = {}
        for p in (files.cow, Path(self.guest.base or files.cow)):
            st = p.stat()
            want[(st.st_dev, st.st_ino)] = str(p)
        seed = files.seed.stat()
        held = set()
        fd_dir = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                st = os.stat(f"{fd_dir}/{fd}")
                held.add((st.st_dev, st.st_ino))
        return set(want) <= held and (seed.st_dev, seed.st_ino) not in held

    async def _helper(self, keep: list[str]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warden.host.jail",
            "empty",
            str(self.pid),
            str(self.start),
            *keep,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), HELPER_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        try:
            report: dict[str, Any] = json.loads(out.decode() or "{}")
        except ValueError:
            report = {"error": f"exit {proc.returncode}: {err.decode(errors='replace')[-500:]}"}
        if "error" in report:
            raise WardenError(f"{self.guest.name}: emptying the jail failed: {report['error']}")
        return report
