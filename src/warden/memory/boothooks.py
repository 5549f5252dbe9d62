"""The balancer's boot hooks: admission (floors) before a start, room in the budget for the
boot size before the launch (a guest boots with all of `memory` plugged), the ledger reset
when a kernel comes up (again, after a reboot: UML re-execs with its whole boot size) and
released, with the guest's Watch, when it exits. A part of the Balancer (memory/balancer.py).
"""

import asyncio
import contextlib
import time

from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Guest
from warden.errors import Conflict, WardenError
from warden.memory import observe
from warden.memory.policy import admission_refusal
from warden.memory.state import BalancerState
from warden.units import format_size

SETTLE = 1.0  # seconds after "up" before the baseline is taken and actions begin
ROOM_TIMEOUT = 60.0  # how long a boot waits for the budget to make room for it


class BootHooks(BalancerState):
    def floors_in_use(self, exclude: str) -> dict[str, int]:
        out = {}
        for name in self.ledger.entries:
            sup = self.core.guests.get(name)
            if name != exclude and sup is not None:
                out[name] = sup.spec.memory_min
        return out

    def check_start(self, sup: Guest) -> None:
        """Admission, before anything changes (the daemon's start check): the guest's floor
        must fit beside the floors of the guests already running."""
        if sup.state in m.LIVE:
            return  # the state machine says "already running" better
        self._admit(sup)

    def _admit(self, sup: Guest) -> None:
        refusal = admission_refusal(
            sup.name, sup.spec.memory_min, self.floors_in_use(sup.name), self.cfg.budget
        )
        if refusal:
            self._record("ev", g=sup.name, what="refused", reason=refusal)
            raise Conflict(refusal)

    async def before_boot(self, sup: Guest, extras: BootExtras) -> None:
        name, size = sup.name, sup.spec.memory
        self.ledger.release(name)  # any earlier boot of it is over
        async with self._boot_lock:
            # Again, in turn with the other boots (starts checked at once may all have passed
            # before any of them booted; restarts by the restart policy come this way only).
            self._admit(sup)
            self.ledger.holds[name] = size
            self._wake.set()
            try:
                await self._wait_room(sup, size)
                self.ledger.boot(name, size)
                self._record("ev", g=name, what="boot", max=size // 1024)
            except BaseException:
                self.ledger.holds.pop(name, None)
                raise
        extras.cleanup.append(lambda: self._release(name, "launch failed"))
        self._dirty = True
        self._save()

    async def _wait_room(self, sup: Guest, size: int) -> None:
        name = sup.name
        deadline = time.monotonic() + ROOM_TIMEOUT
        while self.ledger.free(include_holds=False) < size:
            if sup.state is not m.State.STARTING:
                raise Conflict(f"{name}: the start was cancelled while it waited for memory")
            # Guests still booting, or up but not yet assessed (nothing is known of what they
            # can give: one just up, before its first plan, would count as giving nothing).
            unknown = [
                n
                for n, e in self.ledger.entries.items()
                if n != name and (e.booting or self._unsettled(n))
            ]
            spare = self._spare(exclude=name)
            free = self.ledger.free(include_holds=False)
            # Not while unplugs run: they are making room, and their guests are in no plan.
            hopeless = not unknown and not self.acting and free + spare < size
            if hopeless or time.monotonic() > deadline:
                msg = (
                    f"cannot start {name}: it boots with all of its memory "
                    f"({format_size(size)}) plugged, and the memory budget "
                    f"{format_size(self.ledger.budget)} has {format_size(max(0, free))} free; "
                    f"the running guests ({self._plugged_list(name)}) can give back only "
                    f"{format_size(spare)} more without going below their working sets"
                    + ("" if hopeless else f" (waited {ROOM_TIMEOUT:.0f} s)")
                    + ". Stop a guest, lower this guest's memory, or raise [host] memory_budget"
                )
                self._record("ev", g=name, what="refused", reason=msg)
                raise Conflict(msg)
            async with self._tick_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._tick_done.wait(), 1.0)

    def _unsettled(self, name: str) -> bool:
        """Up but not yet assessed: nothing is known of what it can give."""
        w = self._seen(name)
        return w.settle is not None or w.assessed is None

    def _spare(self, exclude: str) -> int:
        return sum(
            max(0, self.ledger.entries[n].hi - w.assessed.must)
            for n, w in self.watches.items()
            if w.assessed is not None
            and n != exclude
            and n in self.ledger.entries
            and self.ledger.entries[n].pin is None
        )

    def _plugged_list(self, exclude: str) -> str:
        entries = sorted(self.ledger.entries.items())
        items = [f"{n} {format_size(e.hi)}" for n, e in entries if n != exclude]
        return ", ".join(items) or "none"

    async def after_launch(self, sup: Guest, pid: int) -> None:
        e = self.ledger.entries.get(sup.name)
        if e is not None:
            e.pid = pid
            e.pid_start = sup.pid_start
            self._dirty = True

    async def on_up(self, sup: Guest) -> None:
        name = sup.name
        old = self.ledger.entries.get(name)
        rebooted = old is not None and not old.booting
        size = old.max if old is not None else sup.spec.memory
        e = self.ledger.up(name, size)
        e.pid, e.pid_start, e.baseline = sup.pid, sup.pid_start, None
        w = self._w(name)
        w.memo = w.mem = w.vm = w.assessed = None
        w.settle = time.monotonic() + SETTLE
        try:
            marks = await observe.watermarks(sup.request, size=size)
        except WardenError:
            marks = None  # the policy falls back on the kernel's rule of thumb
        self._w(name).marks = marks
        # The first `oomplug` also tells the kernel that its host grants credit (before it,
        # its hook never waits for one).
        self._w(name).counters = None
        e.hook = await self._speaks_oomplug(sup)
        c = await self.act.sync(name, sup.request_intr) if e.hook else None
        if c is not None:
            self._w(name).counters = c
        self._record(
            "ev", g=name, what="reboot" if rebooted else "up", max=size // 1024, hook=e.hook
        )
        self._dirty = True
        self._wake.set()

    async def _speaks_oomplug(self, sup: Guest) -> bool:
        """Whether the guest's kernel has the OOM hook: its `help` lists `oomplug`."""
        try:
            return "oomplug" in await sup.request("help", 1.0)
        except (WardenError, OSError):
            return False

    async def after_exit(self, sup: Guest) -> None:
        self._release(sup.name, "exit")

    def _release(self, name: str, why: str) -> None:
        if name in self.ledger.entries or name in self.ledger.holds:
            self._record("ev", g=name, what="exit", why=why)
        self.ledger.release(name)
        w = self.watches.pop(name, None)
        if w is not None:
            w.cancel()
        self.act.forget(name)
        self._dirty = True
        self._save()
        self._wake.set()
