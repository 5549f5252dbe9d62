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
from dataclasses import replace
from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import Guest
from warden.errors import Conflict, NotFound, SpecError, WardenError
from warden.memory import observe
from warden.memory.boothooks import BootHooks
from warden.memory.ledger import SNAP, Entry, estimate_plugged, pages
from warden.memory.policy import (
    MIB,
    Assessment,
    Config,
    GuestInput,
    Memo,
    Plan,
    Plug,
    Unplug,
    assess,
    decide,
    set_refusal,
    stock_headroom,
)
from warden.memory.procfs import ProcfsError
from warden.memory.record import LogWriter, load_fastest, load_state, memory_dir
from warden.memory.rescue import RESCUE_MIN, Rescues
from warden.tasks import cancel, spawn

log = logging.getLogger("warden.memory")

DRIFT_EVERY = 10  # full ticks between checks of the ledger against the guest's own counters
DRIFT = 2 * SNAP
SET_TIMEOUT = 15.0
COLD_WATCH = 1  # a quiet guest is read every watch tick too...
COLD_RATE = 300.0  # ...but quiet guests together at most this many times a second
HOT_MOVE = 2 * MIB  # MemAvailable moving this much between reads makes a guest hot
# One guest's reading in a tick: a guest that answers slowly or endlessly (a hostile kernel
# can) is skipped after this and probed aside, so it holds up no other guest's tick.
OBSERVE_DEADLINE = 2.0


class Balancer(BootHooks, Rescues):
    name = "memory"

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
        for w in list(self.watches.values()):
            await cancel(w.rescue)
            w.rescue = None
        if self.acting:  # let steps in flight end: the ledger then knows what they did
            await asyncio.wait(list(self.acting.values()), timeout=10)
        for acting in list(self.acting.values()):
            await cancel(acting)
        for w in list(self.watches.values()):
            await cancel(w.probe)
            w.probe, w.silent = None, False
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
        w = self._seen(name)
        if now < w.hot_until:
            return True
        return now - w.last_read >= cold_period - 1e-3

    async def tick(self, full: bool) -> Plan:
        running = self._running()
        now = time.monotonic()
        if full:
            self.ticks += 1
            read = running
        else:
            quiet = sum(1 for n in running if now >= self._seen(n).hot_until)
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
        memos = {n: w.memo for n, w in self.watches.items() if w.memo is not None}
        plan = decide(
            inputs,
            memos,
            self.cfg,
            time.monotonic(),
            hold=self.ledger.held() + self._owed(),
            host_available=self.host_available,
            fastest=self.fastest,
        )
        for n in plan.assessments:  # each plug-back is one plan's signal
            if n in self.watches:
                self.watches[n].plugged_back = False
        if plan.fastest > self.fastest:
            self.fastest = plan.fastest
            self._dirty = True
        for w in self.watches.values():
            w.memo = None
        for n, memo in plan.memos.items():
            self._w(n).memo = memo
        self.plan = plan
        busy = {a.guest for a in plan.actions}
        for n, a in plan.assessments.items():
            w = self._w(n)
            w.assessed = a
            if a.level not in ("calm", "pinned") or n in busy:
                w.hot_until = now + self.cfg.hold
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
            self._gone_silent(name)
            return False

    def _gone_silent(self, name: str) -> None:
        """Not observable until it answers again (a probe, spawned at its next read, asks)."""
        w = self._w(name)
        w.mem, w.silent, w.probe = None, True, None
        self._record("ev", g=name, what="silent")

    async def _observe(self, name: str, sup: Guest, full: bool) -> bool:
        """Read one guest; True when this tick has a fresh reading of it."""
        e = self.ledger.entries.get(name)
        if e is None:
            return False  # it ended between the tick's list of running guests and this read
        if name in self.acting:
            return False  # its unplug reads it before every step
        w = self._seen(name)
        if w.silent:
            # It stopped answering: probe it aside, so that one hung guest does not slow
            # every tick (and so everyone else's reaction) by its timeouts.
            if w.probe is None or w.probe.done():
                w.probe = spawn(self._probe(name, sup), f"memory-probe:{name}")
            return False
        if not e.certain:
            await self.act.reconcile(name, sup.request)
        if e.hook and full:
            await self._settle(name, sup)
        try:
            mem = await observe.meminfo(sup.request, size=e.max)
            vm = await observe.vmstat(sup.request) if full else None
        except (WardenError, OSError):
            self._gone_silent(name)  # silent or gone: not observable until it answers
            return False
        w = self._w(name)
        if full:
            w.vm = vm
        before = w.mem
        if before is None or abs(mem.available - before.available) >= HOT_MOVE:
            w.hot_until = time.monotonic() + self.cfg.hold
        w.mem = mem
        w.last_read = time.monotonic()
        due = w.settle
        if due is not None and time.monotonic() >= due and e.certain and e.hi == e.max:
            e.baseline = mem.unaccounted  # nothing unplugged yet: this is the guest's own
            w.settle = None
            self._record("ev", g=name, what="baseline", kib=mem.unaccounted // 1024)
            self._dirty = True
        if full:
            w.host_usage = observe.cgroup_memory(sup.cgroup)
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
        while self._seen(name).silent and sup.state is m.State.RUNNING:
            try:
                await observe.meminfo(sup.request, size=sup.spec.memory)
            except (WardenError, OSError):
                await asyncio.sleep(self.cfg.interval)
                continue
            break
        w = self.watches.get(name)
        if w is not None and w.silent:
            probe, w.silent, w.probe = w.probe, False, None
            if probe is not None:
                self._record("ev", g=name, what="answers")
            self._wake.set()

    async def _settle(self, name: str, sup: Guest) -> None:
        """The kernel's own counters: what it plugged back, its credit and (with no action
        in flight) what is plugged, exactly."""
        c = await self.act.sync(name, sup.request_intr)
        if c is None:
            return
        self._w(name).counters = c
        e = self.ledger.entries.get(name)
        if e is None or not e.certain or self.act.lock(name).locked():
            return
        moved = self.ledger.settle(name, c)
        if moved is not None:
            self._record("ev", g=name, what="settle", hi=moved[0] // 1024, now=moved[1] // 1024)
            self._dirty = True

    def _input(self, name: str, running: dict[str, Guest], full: bool) -> GuestInput:
        e = self.ledger.entries[name]
        sup = self.core.guests.get(name)
        floor = sup.spec.memory_min if sup is not None else 0
        weight = sup.spec.memory_weight if sup is not None else 100
        w = self._seen(name)
        observable = name in running and w.settle is None and name not in self.acting and e.certain
        return GuestInput(
            name=name,
            max=e.max,
            floor=min(floor, e.max),
            weight=weight,
            plugged=e.hi,
            certain=e.certain,
            pin=e.pin,
            mem=w.mem if observable else None,
            vm=w.vm if observable and full else None,  # vmstat: full ticks
            marks=w.marks,
            host_usage=w.host_usage,
            hook=e.hook,
            credit=e.credit,
            plugged_back=observable and w.plugged_back,
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
                self._seen(u.guest).marks,
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

    # ---- what `warden top` and `warden mem set` use ---------------------------------------
    def snapshot(self) -> dict[str, Any]:
        plan = self.plan
        guests = []
        for name, e in sorted(self.ledger.entries.items()):
            sup = self.core.guests.get(name)
            guests.append(self._guest_json(name, e, sup, self._seen(name).assessed))
        return {
            "budget": self.cfg.budget,
            "effective_budget": plan.budget if plan is not None else self.cfg.budget,
            "plugged": self.ledger.total() - self.ledger.credit(),
            # The emergency reserve, in the budget: what the plan leaves unplugged for the
            # guests' OOM hooks, and how much of it they hold as credit now.
            "reserve": plan.reserve if plan is not None else 0,
            "credit": self.ledger.credit(),
            "fastest": int(self.fastest),
            "held": self.ledger.held() + self._owed(),
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
        w = self._seen(name)
        memo = w.memo
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
            "booting": e.booting or w.settle is not None,
            "pin": e.pin,
            "hook": e.hook,
            "credit": e.credit,
            "host_usage": w.host_usage,
            "signals": list(memo.signals) if memo is not None else [],
            "last_actions": [r for r in self.recent if r["k"] == "act" and r.get("g") == name][-3:],
        }
        c = w.counters
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
        if e.booting or self._seen(name).settle is not None or not e.certain:
            raise Conflict(f"{name} is still coming up; try again in a second")
        size = pages(size)
        if self._seen(name).silent:
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
            marks=self._seen(name).marks,
            hook=e.hook,
            credit=e.credit,
        )
        g = replace(g, headroom=stock_headroom(g, self.fastest, self.cfg))
        memo = self._seen(name).memo
        a, _ = assess(g, Memo() if memo is None else memo, self.cfg, time.monotonic())
        others = [
            w.assessed for n, w in self.watches.items() if n != name and w.assessed is not None
        ]
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
        out = self._guest_json(name, cur or e, sup, self._seen(name).assessed)
        out["reached"] = cur is not None and abs(cur.hi - size) < self.cfg.min_change
        return out


__all__ = ["MIB", "OBSERVE_DEADLINE", "RESCUE_MIN", "Balancer"]
