"""The balancer: observes every running guest, asks the policy, performs the plan.

One asyncio task. Every `watch` seconds (0.1 s) it reads each running guest's meminfo and
acts only to give memory back; every `interval` (the fleet's [host] balance_interval, 1 s)
it also reads vmstat and the host's side, lets the policy tighten, and writes a log line.
All plugs and unplugs are performed by this task (admission, `warden mem set` and boots only
change what the policy is asked and wake it), so actions on one guest never interleave.

It is also a BootHook: admission (floors) before a start, room in the budget for the boot
size before the launch (a guest boots with all of `memory` plugged), the ledger reset when a
kernel comes up (again, after a reboot: UML re-execs with its whole boot size) and released
when it exits.

Guests whose kernel has the OOM hook (kernel/0004; found at "up": `help` lists `oomplug`)
hold a share of the emergency reserve as credit and plug it back themselves when they run
out. Their MEMORY notify is a hint: it starts a rescue (one task per guest, hints coalesced)
that reads the kernel's counters, books what was plugged back and grants credit again, from
the free budget at once or, when the budget has none, through a hold the next plan makes
room for; a guest that no plan can serve even with everyone at their floors is denied (its
own OOM killer runs: its work does not fit the budget). See
docs/decisions/2026-12-07-memory-never-kills.md.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import BootExtras, Core, Guest
from warden.errors import Conflict, NotFound, SpecError, WardenError
from warden.memory import observe
from warden.memory.act import Actuator
from warden.memory.hook import Counters, hint_waiting
from warden.memory.ledger import SNAP, Entry, Ledger, estimate_plugged, pages
from warden.memory.policy import (
    MIB,
    Assessment,
    Config,
    GuestInput,
    Memo,
    Plan,
    Plug,
    Unplug,
    admission_refusal,
    assess,
    decide,
    set_refusal,
    stock_headroom,
)
from warden.memory.procfs import PAGE, Meminfo, ProcfsError, Vmstat, Watermarks
from warden.memory.record import LogWriter, load_fastest, load_state, memory_dir, save_state
from warden.tasks import cancel, spawn
from warden.units import format_size

log = logging.getLogger("warden.memory")

SETTLE = 1.0  # seconds after "up" before the baseline is taken and actions begin
ROOM_TIMEOUT = 60.0  # how long a boot waits for the budget to make room for it
DRIFT_EVERY = 10  # full ticks between checks of the ledger against the guest's own counters
DRIFT = 2 * SNAP
SET_TIMEOUT = 15.0
COLD_WATCH = 1  # a quiet guest is read every watch tick too...
COLD_RATE = 300.0  # ...but quiet guests together at most this many times a second
HOT_MOVE = 2 * MIB  # MemAvailable moving this much between reads makes a guest hot
# One guest's reading in a tick: a guest that answers slowly or endlessly (a hostile kernel
# can) is skipped after this and probed aside, so it holds up no other guest's tick.
OBSERVE_DEADLINE = 2.0
RESCUE_MIN = 32 * MIB  # the least credit a guest that ran out is granted again at once...
RESCUE_HORIZON = 0.1  # ...or this long of the fleet's fastest growth, if more
RESCUE_GAP = 0.005  # seconds between two rescues of one guest (hints may come in floods)
DENY_AFTER = 2.0  # seconds a guest waits in its OOM hook before a hopeless wait is ended


class Balancer:
    name = "memory"

    def __init__(self, core: Core):
        self.core = core
        self.cfg = Config(budget=0)
        self.ledger = Ledger(budget=0)
        self.act = Actuator(self.ledger, self._record)
        self.memos: dict[str, Memo] = {}
        self.mem: dict[str, Meminfo] = {}
        self.vm: dict[str, Vmstat] = {}
        self.marks: dict[str, Watermarks] = {}
        self.host_usage: dict[str, int | None] = {}
        self.settle: dict[str, float] = {}  # name -> monotonic time its baseline is due
        self.silent: dict[str, asyncio.Task[None] | None] = {}  # guests that stopped answering
        self.acting: dict[str, asyncio.Task[int]] = {}  # unplugs in flight, by guest
        self.hot_until: dict[str, float] = {}  # read on every watch tick until then
        self.last_read: dict[str, float] = {}
        self.plan: Plan | None = None
        # Each guest's latest assessment: a plan holds only the guests read in its tick (a
        # quiet guest is not read on every watch tick; one with an unplug in flight is not).
        self.assessed: dict[str, Assessment] = {}
        self.host_available: int | None = None
        self.fastest = 0.0  # the fleet's fastest growth of `used` seen (bytes/s)
        self.counters: dict[str, Counters] = {}  # each hooked guest's latest `oomplug` reply
        self.hinted: set[str] = set()  # guests whose MEMORY notify awaits a rescue
        self.rescues: dict[str, asyncio.Task[None]] = {}
        self.emergency: dict[str, int] = {}  # credit owed to guests out of memory (a hold)
        self.waiting_since: dict[str, float] = {}  # guests seen waiting in their OOM hook
        self.plugged_back: set[str] = set()  # guests whose hook plugged back since the last plan
        self.recent: deque[dict[str, Any]] = deque(maxlen=400)
        self.peak_total = 0
        self.over = 0  # ticks that found the ledger above the budget
        self.ticks = 0
        self.log: LogWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tick_done = asyncio.Condition()
        self._boot_lock = asyncio.Lock()
        self._dirty = False

    # ---- configuration --------------------------------------------------------------------
    def _configure(self) -> None:
        host = self.core.fleet.host
        total = observe.host_meminfo().total
        budget = host.memory_budget or max(0, total - host.memory_reserve)
        interval = host.balance_interval
        # watch 0: no headroom checks between full ticks (a plain once-per-interval loop)
        watch = min(host.balance_watch, interval) if host.balance_watch > 0 else interval
        self.cfg = Config(budget=budget, interval=interval, watch=watch)
        self.ledger.budget = budget

    def fleet_changed(self) -> None:
        before = self.cfg.budget
        self._configure()
        if self.cfg.budget != before:
            self._record("ev", g=None, what="budget", kib=self.cfg.budget // 1024)
        self._wake.set()

    # ---- service life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._configure()
        self.log = LogWriter(
            memory_dir(self.core.layout.home) / "log",
            {
                "budget": self.cfg.budget // 1024,
                "interval": self.cfg.interval,
                "watch": self.cfg.watch,
            },
        )
        self._adopt_running()
        self._task = spawn(self._run(), "memory-balancer")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        for rescue in list(self.rescues.values()):
            await cancel(rescue)
        self.rescues.clear()
        if self.acting:  # let steps in flight end: the ledger then knows what they did
            await asyncio.wait(list(self.acting.values()), timeout=10)
        for acting in list(self.acting.values()):
            await cancel(acting)
        for probe in list(self.silent.values()):
            await cancel(probe)
        self.silent.clear()
        self._save()
        if self.log is not None:
            self.log.close()
            self.log = None

    def _adopt_running(self) -> None:
        """Guests that outlived the previous daemon: trust its ledger for the same boot only."""
        path = memory_dir(self.core.layout.home) / "state.json"
        try:
            saved = load_state(path)
        except WardenError as err:
            log.error("%s", err)
            saved = {}
        self.fastest = load_fastest(path)
        for name, sup in ((g.name, g) for g in self.core.guests):
            if sup.state not in m.LIVE or sup.pid is None:
                continue
            s = saved.get(name)
            trusted = s is not None and s.pid == sup.pid and s.pid_start == sup.pid_start
            if s is not None and trusted:
                e = self.ledger.adopt(name, s.max, s.lo, s.hi)
                e.baseline, e.pin = s.baseline, s.pin
                e.hook, e.credit, e.selfplugged = s.hook, s.credit, s.selfplugged
            else:
                e = self.ledger.adopt(name, sup.spec.memory, None, None)
            e.pid, e.pid_start = sup.pid, sup.pid_start
            self._record("ev", g=name, what="reattach", trusted=trusted)
        self._dirty = True

    # ---- boot hooks -----------------------------------------------------------------------
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
                if n != name and (e.booting or n in self.settle or n not in self.assessed)
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

    def _spare(self, exclude: str) -> int:
        return sum(
            max(0, self.ledger.entries[n].hi - a.must)
            for n, a in self.assessed.items()
            if n != exclude and n in self.ledger.entries and self.ledger.entries[n].pin is None
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
        self.memos.pop(name, None)
        self.mem.pop(name, None)
        self.vm.pop(name, None)
        self.assessed.pop(name, None)
        self.settle[name] = time.monotonic() + SETTLE
        try:
            self.marks[name] = await observe.watermarks(sup.request, size=size)
        except WardenError:
            self.marks.pop(name, None)  # the policy falls back on the kernel's rule of thumb
        # The first `oomplug` also tells the kernel that its host grants credit (before it,
        # its hook never waits for one).
        self.counters.pop(name, None)
        e.hook = await self._speaks_oomplug(sup)
        c = await self.act.sync(name, sup.request_intr) if e.hook else None
        if c is not None:
            self.counters[name] = c
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
        self.memos.pop(name, None)
        self.mem.pop(name, None)
        self.vm.pop(name, None)
        self.assessed.pop(name, None)
        self.marks.pop(name, None)
        self.host_usage.pop(name, None)
        self.settle.pop(name, None)
        self.hot_until.pop(name, None)
        self.last_read.pop(name, None)
        task = self.silent.pop(name, None)
        if task is not None:
            task.cancel()
        rescue = self.rescues.pop(name, None)
        if rescue is not None:
            rescue.cancel()
        self.hinted.discard(name)
        self.emergency.pop(name, None)
        self.waiting_since.pop(name, None)
        self.plugged_back.discard(name)
        self.counters.pop(name, None)
        self.act.forget(name)
        self._dirty = True
        self._save()
        self._wake.set()

    # ---- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        next_full = time.monotonic()
        while True:
            now = time.monotonic()
            full = now >= next_full
            if full:
                next_full = max(next_full + self.cfg.interval, now + self.cfg.interval / 2)
            try:
                await self.tick(full)
            except Exception:
                log.exception("memory balancer tick")
            async with self._tick_done:
                self._tick_done.notify_all()
            wait = max(0.0, min(self.cfg.watch, next_full - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    def _running(self) -> dict[str, Guest]:
        out = {}
        for name, e in self.ledger.entries.items():
            sup = self.core.guests.get(name)
            if sup is not None and not e.booting and sup.state is m.State.RUNNING:
                out[name] = sup
        return out

    def _due(self, name: str, now: float, cold_period: float) -> bool:
        """On a watch tick: read a hot guest (active in the last `hold` seconds: its memory
        moved, it was short, or it was acted on) every time, a quiet one every
        `cold_period`. A read costs the daemon ~0.35 ms of CPU (measured: 20 idle guests,
        daemon at 1.0% of a core with full ticks only, 5.1% reading all every 0.1 s, 4.0%
        with quiet ones every 0.3 s, which let a 200 MiB burst meet the OOM killer once in
        five). Quiet guests are read every watch tick while they are fewer than 30, less
        often beyond (COLD_RATE reads a second in all: ~10% of a core), so that a big idle
        fleet costs a bounded share of the daemon."""
        if now < self.hot_until.get(name, 0.0):
            return True
        return now - self.last_read.get(name, 0.0) >= cold_period - 1e-3

    async def tick(self, full: bool) -> Plan:
        running = self._running()
        now = time.monotonic()
        if full:
            self.ticks += 1
            read = running
        else:
            quiet = sum(1 for n in running if now >= self.hot_until.get(n, 0.0))
            cold = max(COLD_WATCH * self.cfg.watch, quiet / COLD_RATE)
            read = {n: s for n, s in running.items() if self._due(n, now, cold)}
        fresh = await asyncio.gather(*(self._observe_within(n, s, full) for n, s in read.items()))
        # Only what was read now, against the ledger as it stands: a guest whose unplug was
        # in flight during the reads (skipped) may have ended since, and its last reading
        # with the new plugged size would show `used` down by the step, then back up at the
        # next read: phantom growth of 80 MiB/s, remembered as a burst (density.py).
        read = {n: s for (n, s), ok in zip(read.items(), fresh, strict=True) if ok}
        try:
            self.host_available = observe.host_meminfo().available
        except (OSError, ProcfsError):
            self.host_available = None
        inputs = [self._input(n, read, full) for n in self.ledger.entries]
        plan = decide(
            inputs,
            self.memos,
            self.cfg,
            time.monotonic(),
            hold=self.ledger.held() + sum(self.emergency.values()),
            host_available=self.host_available,
            fastest=self.fastest,
        )
        self.plugged_back -= set(plan.assessments)  # each plug-back is one plan's signal
        if plan.fastest > self.fastest:
            self.fastest = plan.fastest
            self._dirty = True
        self.memos = dict(plan.memos)
        self.plan = plan
        self.assessed.update(plan.assessments)
        busy = {a.guest for a in plan.actions}
        for n, a in plan.assessments.items():
            if a.level not in ("calm", "pinned") or n in busy:
                self.hot_until[n] = now + self.cfg.hold
        if plan.actions:
            await self._execute(plan, running)
        await self._arm(plan, running)
        await self._deny_hopeless(running)
        self._peak(None)
        total = self.ledger.total()
        if total > self.ledger.budget:
            self.over += 1
            if full:
                self._record("ev", g=None, what="over", by=(total - self.ledger.budget) // 1024)
        if full:
            self._log_tick(plan)
        self._save()
        return plan

    async def _observe_within(self, name: str, sup: Guest, full: bool) -> bool:
        try:
            return await asyncio.wait_for(self._observe(name, sup, full), OBSERVE_DEADLINE)
        except TimeoutError:
            self.mem.pop(name, None)
            self.silent[name] = None
            self._record("ev", g=name, what="silent")
            return False

    async def _observe(self, name: str, sup: Guest, full: bool) -> bool:
        """Read one guest; True when this tick has a fresh reading of it."""
        e = self.ledger.entries.get(name)
        if e is None:
            return False  # it ended between the tick's list of running guests and this read
        if name in self.acting:
            return False  # its unplug reads it before every step
        if name in self.silent:
            # It stopped answering: probe it aside, so that one hung guest does not slow
            # every tick (and so everyone else's reaction) by its timeouts.
            task = self.silent[name]
            if task is None or task.done():
                self.silent[name] = spawn(self._probe(name, sup), f"memory-probe:{name}")
            return False
        if not e.certain:
            await self.act.reconcile(name, sup.request)
        if e.hook and full:
            await self._settle(name, sup)
        try:
            mem = await observe.meminfo(sup.request, size=e.max)
            if full:
                self.vm[name] = await observe.vmstat(sup.request)
        except (WardenError, OSError):
            self.mem.pop(name, None)  # silent or gone: not observable until it answers
            self.silent[name] = None
            self._record("ev", g=name, what="silent")
            return False
        before = self.mem.get(name)
        if before is None or abs(mem.available - before.available) >= HOT_MOVE:
            self.hot_until[name] = time.monotonic() + self.cfg.hold
        self.mem[name] = mem
        self.last_read[name] = time.monotonic()
        due = self.settle.get(name)
        if due is not None and time.monotonic() >= due and e.certain and e.hi == e.max:
            e.baseline = mem.unaccounted  # nothing unplugged yet: this is the guest's own
            del self.settle[name]
            self._record("ev", g=name, what="baseline", kib=mem.unaccounted // 1024)
            self._dirty = True
        if full:
            self.host_usage[name] = observe.cgroup_memory(sup.cgroup)
            stock = not e.hook  # a hooked kernel's own count settles it every full tick
            if stock and e.certain and e.baseline is not None and self.ticks % DRIFT_EVERY == 0:
                est = estimate_plugged(mem, e.max, e.baseline)
                if abs(est - e.hi) > DRIFT:
                    self._record("ev", g=name, what="drift", est=est // 1024, hi=e.hi // 1024)
                    await self.act.reconcile(name, sup.request)
                    self._dirty = True
                    return False  # the ledger moved under this reading
        return True

    async def _probe(self, name: str, sup: Guest) -> None:
        while name in self.silent and sup.state is m.State.RUNNING:
            try:
                await observe.meminfo(sup.request, size=sup.spec.memory)
            except (WardenError, OSError):
                await asyncio.sleep(self.cfg.interval)
                continue
            break
        if self.silent.pop(name, None) is not None:
            self._record("ev", g=name, what="answers")
            self._wake.set()

    async def _settle(self, name: str, sup: Guest) -> None:
        """The kernel's own counters: what it plugged back, its credit and (with no action
        in flight) what is plugged, exactly."""
        c = await self.act.sync(name, sup.request_intr)
        if c is None:
            return
        self.counters[name] = c
        e = self.ledger.entries.get(name)
        if e is None or not e.certain or self.act.lock(name).locked():
            return
        moved = self.ledger.settle(name, c)
        if moved is not None:
            self._record("ev", g=name, what="settle", hi=moved[0] // 1024, now=moved[1] // 1024)
            self._dirty = True

    # ---- the OOM hook: arming, hints, rescues -----------------------------------------------
    async def _arm(self, plan: Plan, running: dict[str, Guest]) -> None:
        """The plan's credits (each hooked guest's share of the reserve; what it takes back
        first), then what guests that ran out are still owed."""
        for c in sorted(plan.credits, key=lambda c: c.amount):
            sup = running.get(c.guest)
            if sup is None or c.guest in self.silent or c.guest in self.emergency:
                continue
            if c.amount < 0 and self._rescuing(c.guest):
                continue  # a rescue may just have granted it; a later calm plan takes it
            await self.act.credit(c.guest, sup.request_intr, c.amount, c.why)
            self._dirty = True
        for name in list(self.emergency):
            sup = running.get(name)
            if sup is None:
                self.emergency.pop(name, None)
            else:
                self._start_rescue(name, sup)

    def _rescuing(self, name: str) -> bool:
        task = self.rescues.get(name)
        return name in self.hinted or (task is not None and not task.done())

    def _start_rescue(self, name: str, sup: Guest) -> None:
        self.hinted.add(name)
        task = self.rescues.get(name)
        if task is None or task.done():
            self.rescues[name] = spawn(self._rescue(name, sup), f"memory-rescue:{name}")

    def memory_notified(self, sup: Guest, data: bytes) -> None:
        """A MEMORY notify from the guest's kernel: a hint, never trusted. It only makes the
        balancer ask the kernel itself, one rescue at a time per guest (hints coalesce)."""
        name = sup.name
        e = self.ledger.entries.get(name)
        if e is None or not e.hook or sup.state is not m.State.RUNNING:
            return
        if hint_waiting(data):
            self.hot_until[name] = time.monotonic() + self.cfg.hold
        self._start_rescue(name, sup)

    def _rescue_size(self, c: Counters) -> int:
        """The credit a guest that ran out holds again: RESCUE_MIN, or what the fleet's
        fastest growth fills in RESCUE_HORIZON if more, up to all it has unplugged."""
        return pages(min(c.unplugged, max(RESCUE_MIN, int(self.fastest * RESCUE_HORIZON))))

    async def _rescue(self, name: str, sup: Guest) -> None:
        while name in self.hinted:
            self.hinted.discard(name)
            before = self.counters.get(name)
            c = await self.act.sync(name, sup.request_intr)
            e = self.ledger.entries.get(name)
            if c is None or e is None:
                return
            self.counters[name] = c
            if before is not None and c.plugged > before.plugged:
                # It ran out: plan for it now, as an emergency (its MemAvailable shows what the
                # credit gave, not what it is filling), not at the next watch tick.
                self.plugged_back.add(name)
                self.hot_until[name] = time.monotonic() + self.cfg.hold
                self._wake.set()
            want = self._rescue_size(c)
            room = min(self.ledger.free(include_holds=False), e.max - e.hi - e.credit)
            amount = pages(min(want - e.credit, room))
            if amount >= PAGE:
                got = await self.act.credit(name, sup.request_intr, amount, "it ran out of memory")
                c = got or c
                if got is not None:
                    self.counters[name] = got
            owed = pages(want - e.credit)
            if c.waiting:
                self.waiting_since.setdefault(name, time.monotonic())
            else:
                self.waiting_since.pop(name, None)
            if c.waiting and owed >= PAGE and c.unplugged > e.credit:
                # It waits and nothing is free in the budget now: the next plan makes room for
                # it (a hold), and the tick after grants it (or, if the working sets alone
                # fill the budget, a denial ends the wait).
                self.emergency[name] = owed
                self._wake.set()
            else:
                self.emergency.pop(name, None)
            self._dirty = True
            await asyncio.sleep(RESCUE_GAP)

    async def _deny_hopeless(self, running: dict[str, Guest]) -> None:
        """A guest that has waited in its OOM hook for DENY_AFTER while nothing could serve
        it: the working sets alone (every guest's `must`, the plugged size of those not
        assessed, the boots promised) leave the budget no page for it, and nothing is being
        unplugged. Its own OOM killer must run now, not after the hook's 10 s. Anything less
        certain waits: the hook waits for a grant, and one comes once a neighbour is cut
        (a guest that fills beside others is served when they stop growing)."""
        if not self.waiting_since or self.acting:
            return
        now = time.monotonic()
        need = self.ledger.held()
        for n, e in self.ledger.entries.items():
            a = self.assessed.get(n)
            need += a.must if a is not None else e.hi
        if need + len(self.waiting_since) * MIB <= self.ledger.budget:
            return
        for name, since in list(self.waiting_since.items()):
            sup = running.get(name)
            if sup is not None and now - since >= DENY_AFTER:
                await self.act.deny(name, sup.request_intr, "the working sets fill the budget")
                self.waiting_since.pop(name, None)
                self.emergency.pop(name, None)

    def _input(self, name: str, running: dict[str, Guest], full: bool) -> GuestInput:
        e = self.ledger.entries[name]
        sup = self.core.guests.get(name)
        floor = sup.spec.memory_min if sup is not None else 0
        weight = sup.spec.memory_weight if sup is not None else 100
        observable = (
            name in running and name not in self.settle and name not in self.acting and e.certain
        )
        return GuestInput(
            name=name,
            max=e.max,
            floor=min(floor, e.max),
            weight=weight,
            plugged=e.hi,
            certain=e.certain,
            pin=e.pin,
            mem=self.mem.get(name) if observable else None,
            vm=self.vm.get(name) if observable and full else None,  # vmstat: full ticks
            marks=self.marks.get(name),
            host_usage=self.host_usage.get(name),
            hook=e.hook,
            credit=e.credit,
            plugged_back=observable and name in self.plugged_back,
        )

    async def _execute(self, plan: Plan, running: dict[str, Guest]) -> None:
        """Give what the budget has room for now (plugs take milliseconds); start taking in
        the background, one task per guest, in parallel (different guests are different host
        processes), so that steps slowed by a loaded host never hold up the next tick's plugs
        for others. A guest with an unplug in flight is left out of the plans until it ends
        (its entry counts at its high end meanwhile), and each end wakes the loop, so a plug
        that had to wait for that memory comes right after: sum(plugged) never passes the
        budget (the ledger refuses a plug that would)."""
        for p in plan.actions:
            if isinstance(p, Plug) and p.guest in running and p.guest not in self.acting:
                await self.act.plug(p.guest, running[p.guest].request, p.amount, p.why, p.urgent)
        for u in plan.actions:
            if isinstance(u, Unplug) and u.guest in running and u.guest not in self.acting:
                self.acting[u.guest] = spawn(
                    self._unplug(u, running[u.guest]), f"memory-unplug:{u.guest}"
                )
        self._dirty = True

    async def _unplug(self, u: Unplug, sup: Guest) -> int:
        entry = self.ledger.entries.get(u.guest)
        try:
            return await self.act.unplug(
                u.guest,
                sup.request,
                u.amount,
                self.cfg,
                sup.spec.memory_min,
                self.marks.get(u.guest),
                u.why,
                expect_used=u.used,
                spare=u.spare,
                headroom=u.headroom,
                hook=entry is not None and entry.hook,
            )
        finally:
            self.acting.pop(u.guest, None)
            self._dirty = True
            self._wake.set()

    # ---- records --------------------------------------------------------------------------
    def _peak(self, g: str | None) -> None:
        """The budget's high-water mark, at every action and boot, not only every tick."""
        total = self.ledger.total()
        if total > self.peak_total and total > self.ledger.budget and self.log is not None:
            # A new high above the budget: who held what, for the one who reads the log.
            held = {n: [e.hi // 1024, e.credit // 1024] for n, e in self.ledger.entries.items()}
            self.log.write("ev", g=g, what="peak", kib=total // 1024, held=held)
        self.peak_total = max(self.peak_total, total)

    def _record(self, kind: str, **fields: Any) -> None:
        self._peak(fields.get("g"))
        if self.log is not None:
            self.log.write(kind, **fields)
        self.recent.append({"k": kind, "t": round(time.time(), 3), **fields})

    def _log_tick(self, plan: Plan) -> None:
        guests: dict[str, Any] = {}
        for name, e in self.ledger.entries.items():
            a = plan.assessments.get(name)
            rec: dict[str, Any] = {"p": e.hi // 1024, "h": _kib(self.host_usage.get(name))}
            if a is not None:
                rec.update(
                    u=a.used // 1024,
                    a=a.available // 1024,
                    f=a.free // 1024,
                    c=a.cache // 1024,
                    T=a.target // 1024,
                    m=a.must // 1024,
                    s=list(a.signals),
                )
            guests[name] = rec
        self._record_tick(plan, guests)

    def _record_tick(self, plan: Plan, guests: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(
                "tick",
                budget=plan.budget // 1024,
                plugged=self.ledger.total() // 1024,
                credit=self.ledger.credit() // 1024,
                host_avail=_kib(self.host_available),
                g=guests,
            )

    def _save(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        try:
            save_state(
                memory_dir(self.core.layout.home) / "state.json",
                self.ledger.entries,
                self.fastest,
            )
        except OSError as e:
            log.error("saving the balancer state: %s", e)

    # ---- what `warden top` and `warden mem set` use ---------------------------------------
    def snapshot(self) -> dict[str, Any]:
        plan = self.plan
        guests = []
        for name, e in sorted(self.ledger.entries.items()):
            sup = self.core.guests.get(name)
            a = self.assessed.get(name)
            guests.append(self._guest_json(name, e, sup, a))
        return {
            "budget": self.cfg.budget,
            "effective_budget": plan.budget if plan is not None else self.cfg.budget,
            "plugged": self.ledger.total() - self.ledger.credit(),
            # The emergency reserve, in the budget: what the plan leaves unplugged for the
            # guests' OOM hooks, and how much of it they hold as credit now.
            "reserve": plan.reserve if plan is not None else 0,
            "credit": self.ledger.credit(),
            "fastest": int(self.fastest),
            "held": self.ledger.held() + sum(self.emergency.values()),
            "free": self.ledger.free(),
            "peak_plugged": self.peak_total,
            "over_budget_ticks": self.over,
            "host_available": self.host_available,
            "interval": self.cfg.interval,
            "watch": self.cfg.watch,
            "notes": list(plan.notes) if plan is not None else [],
            "guests": guests,
            "recent": [r for r in self.recent if r["k"] in ("act", "ev")][-30:],
        }

    def _guest_json(
        self, name: str, e: Entry, sup: Guest | None, a: Assessment | None
    ) -> dict[str, Any]:
        memo = self.memos.get(name)
        out: dict[str, Any] = {
            "name": name,
            "state": str(sup.state) if sup is not None else "?",
            "max": e.max,
            "floor": sup.spec.memory_min if sup is not None else 0,
            "weight": sup.spec.memory_weight if sup is not None else 0,
            "plugged": e.hi,
            "plugged_lo": e.lo,
            "certain": e.certain,
            "doubt": e.doubt,
            "booting": e.booting or name in self.settle,
            "pin": e.pin,
            "hook": e.hook,
            "credit": e.credit,
            "host_usage": self.host_usage.get(name),
            "signals": list(memo.signals) if memo is not None else [],
            "last_actions": [r for r in self.recent if r["k"] == "act" and r.get("g") == name][-3:],
        }
        c = self.counters.get(name)
        if c is not None:
            out["oom_hook"] = {
                "plugged_back": c.plugged,
                "events": c.events,
                "waits": c.waits,
                "timeouts": c.timeouts,
                "denials": c.denials,
                "last_us": c.last_us,
                "max_us": c.max_us,
                "mean_us": round(c.mean_us, 1),
            }
        if a is not None:
            out.update(
                used=a.used,
                overhead=a.overhead,
                available=a.available,
                free=a.free,
                cache=a.cache,
                must=a.must,
                target=a.target,
                level=a.level,
                reason=a.reason,
            )
            out["signals"] = sorted(set(out["signals"]) | set(a.signals))
        return out

    async def set_size(self, name: str, size: int | None) -> dict[str, Any]:
        sup = self.core.guests.get(name)
        if sup is None:
            raise NotFound(f"no machine named {name!r} (warden ls lists them)")
        e = self.ledger.entries.get(name)
        if e is None or sup.state is not m.State.RUNNING:
            raise Conflict(f"{name} is {sup.state}; memory is set on running guests only")
        if size is None:
            e.pin = None
            self._record("ev", g=name, what="pin", kib=None)
            self._dirty = True
            self._wake.set()
            return self._guest_json(name, e, sup, None)
        if e.booting or name in self.settle or not e.certain:
            raise Conflict(f"{name} is still coming up; try again in a second")
        size = pages(size)
        if name in self.silent:
            raise Conflict(f"{name} does not answer its mconsole now; try again later")
        try:
            mem = await observe.meminfo(sup.request, size=e.max)
        except (WardenError, OSError) as err:
            raise Conflict(f"{name}: cannot read its memory now: {err}") from None
        g = GuestInput(
            name,
            max=e.max,
            floor=sup.spec.memory_min,
            weight=sup.spec.memory_weight,
            plugged=e.hi,
            mem=mem,
            marks=self.marks.get(name),
            hook=e.hook,
            credit=e.credit,
        )
        g = replace(g, headroom=stock_headroom(g, self.fastest, self.cfg))
        a, _ = assess(g, self.memos.get(name, Memo()), self.cfg, time.monotonic())
        others = [x for n, x in self.assessed.items() if n != name]
        refusal = set_refusal(name, size, g, a, self.ledger.free(), others)
        if refusal:
            self._record("ev", g=name, what="refused", reason=refusal)
            bad_input = size > e.max or size < sup.spec.memory_min
            raise (SpecError if bad_input else Conflict)(refusal)
        e.pin = size
        self._record("ev", g=name, what="pin", kib=size // 1024)
        self._dirty = True
        deadline = time.monotonic() + SET_TIMEOUT
        while time.monotonic() < deadline:
            self._wake.set()
            async with self._tick_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._tick_done.wait(), 1.0)
            cur = self.ledger.entries.get(name)
            if cur is None or cur.pin != size:
                break
            if cur.certain and abs(cur.hi - size) < self.cfg.min_change:
                break
        cur = self.ledger.entries.get(name)
        out = self._guest_json(name, cur or e, sup, self.assessed.get(name))
        out["reached"] = cur is not None and abs(cur.hi - size) < self.cfg.min_change
        return out


def _kib(n: int | None) -> int | None:
    return None if n is None else n // 1024


__all__ = ["Balancer", "MIB"]
