"""Action: plugging and unplugging through mconsole, with the ledger kept true.

`config mem=-N` (arch/um/drivers/mconsole_kern.c, mem_config) allocates N bytes page by page
with GFP_ATOMIC and hands each page back to the host (madvise MADV_REMOVE on the memory file);
when an allocation fails it stops and still answers success, and pages it takes from the
atomic reserves leave the guest to die at its next allocation ("Out of memory and no
killable processes"). So an unplug is never asked for more than the guest has free right now:
each step reads meminfo first, takes at most `max_step` and no more than free memory above
the watermark the step must leave, and never goes below `must` computed from that fresh
reading. `config mem=+N` frees pages the guest holds on its unplugged list, and stops quietly
when the list is empty: it cannot plug past the boot size.

Failures (a timeout, an error reply) leave the ledger uncertain; `reconcile` then reads the
guest's meminfo until two readings agree and settles the entry from the estimate
(docs/formats/memlog.md). While uncertain, a guest gets no other action.

A kernel with the OOM hook (kernel/0004) unplugs only what is free above its low watermark
and answers what it did (`done=`): the ledger takes that, not what was asked. Its credit is
moved by `oomplug`, which the guest serves in interrupt context (it answers while its
mconsole work queue waits for memory); credit commands have their own lock, apart from the
plug/unplug lock, so that an emergency grant never waits behind an unplug step.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

from warden.errors import WardenError
from warden.memory import observe
from warden.memory.hook import Counters, Done, HookError, parse_counters, parse_done
from warden.memory.ledger import Ledger, LedgerError, estimate_plugged, pages
from warden.memory.observe import Request
from warden.memory.policy import (
    MIB,
    NUDGE_STEP,
    Config,
    GuestInput,
    must_of,
    unplug_step,
    used_of,
)
from warden.memory.procfs import Watermarks

MIN_STEP = 1 * MIB
GROWN = 8 * MIB
RECONCILE_READS = 6
RECONCILE_AGREE = 2 * MIB
CREDIT_TIMEOUT = 1.0  # `oomplug` is answered from the guest's interrupt handler

Record = Callable[..., None]


def action_timeout(amount: int) -> float:
    """Unplug of touched memory runs at ~1.6 GiB/s here; allow for a loaded host."""
    return 2.0 + amount / (256 * MIB)


class Actuator:
    def __init__(self, ledger: Ledger, record: Record):
        self.ledger = ledger
        self.record = record
        self._locks: dict[str, asyncio.Lock] = {}
        self._credit_locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        lk = self._locks.get(name)
        if lk is None:
            lk = self._locks[name] = asyncio.Lock()
        return lk

    def credit_lock(self, name: str) -> asyncio.Lock:
        lk = self._credit_locks.get(name)
        if lk is None:
            lk = self._credit_locks[name] = asyncio.Lock()
        return lk

    def forget(self, name: str) -> None:
        self._locks.pop(name, None)
        self._credit_locks.pop(name, None)

    async def _config(self, req: Request, name: str, op: str, amount: int, why: str) -> int | None:
        """One `config mem=±N`; what it did, or None when it failed."""
        sign = "-" if op == "unplug" else "+"
        t0 = time.monotonic()
        ok, err = True, ""
        done: Done | None = None
        try:
            reply = await req(f"config mem={sign}{amount // 1024}K", action_timeout(amount))
        except (WardenError, OSError) as failure:
            ok, err = False, str(failure)
        else:
            try:
                done = parse_done(reply)
            except HookError as bad:
                ok, err = False, str(bad)  # it did something: the reconcile finds out what
        ms = (time.monotonic() - t0) * 1000
        end = self.ledger.end_unplug if op == "unplug" else self.ledger.end_plug
        if ok:
            end(name, amount, True, done=None if done is None else done.done)
        else:
            end(name, amount, False, f"{op} of {amount >> 20} MiB: {err}")
        entry = self.ledger.entries.get(name)
        did = amount if done is None else min(amount, pages(done.done))
        fields: dict[str, Any] = {
            "g": name,
            "op": op,
            "kib": did // 1024,
            "ok": ok,
            "ms": round(ms, 1),
            "why": why,
            "plugged": (entry.hi // 1024) if entry else None,
        }
        if done is not None and done.done < amount:
            fields["asked"] = amount // 1024
        if err:
            fields["err"] = err
        self.record("act", **fields)
        return did if ok else None

    # ---- the OOM hook's credit ----------------------------------------------------------------
    async def oomplug(self, name: str, req: Request, arg: str = "") -> Counters | None:
        """`oomplug [arg]` and its counters taken into the ledger (under the credit lock);
        None when the guest did not answer or answered nonsense."""
        command = f"oomplug {arg}".strip()
        try:
            c = parse_counters(await req(command, CREDIT_TIMEOUT))
        except (WardenError, OSError) as failure:
            self.record("ev", g=name, what="oomplug-failed", cmd=command, err=str(failure)[:200])
            return None
        if name not in self.ledger.entries:
            return c
        back = self.ledger.apply(name, c)
        if back:
            e = self.ledger.entries[name]
            self.record(
                "act",
                g=name,
                op="selfplug",
                kib=back // 1024,
                ok=True,
                ms=round(c.last_us / 1000, 3),
                why="its OOM hook plugged back memory it ran out of",
                plugged=e.hi // 1024,
                credit=e.credit // 1024,
            )
        return c

    async def sync(self, name: str, req: Request) -> Counters | None:
        async with self.credit_lock(name):
            return await self.oomplug(name, req)

    async def credit(self, name: str, req: Request, amount: int, why: str) -> Counters | None:
        """Grant (amount > 0, counted in the budget before it is sent, refused when it does
        not fit) or take back (< 0) credit; returns the counters after it."""
        async with self.credit_lock(name):
            if amount > 0:
                try:
                    self.ledger.begin_grant(name, amount)
                except LedgerError:
                    return None
            # Unanswered, a grant may still have landed: it stays counted until a reply
            # brings the kernel's own figure.
            c = await self.oomplug(name, req, f"{'+' if amount > 0 else '-'}{abs(amount) // 1024}K")
            e = self.ledger.entries.get(name)
            self.record(
                "act",
                g=name,
                op="grant" if amount > 0 else "revoke",
                kib=abs(amount) // 1024,
                ok=c is not None,
                why=why,
                credit=None if e is None else e.credit // 1024,
            )
            return c

    async def deny(self, name: str, req: Request, why: str) -> None:
        """End a wait in the guest's OOM hook: its own OOM killer then runs."""
        async with self.credit_lock(name):
            c = await self.oomplug(name, req, "deny")
            self.record("act", g=name, op="deny", kib=0, ok=c is not None, why=why)

    async def unplug(
        self,
        name: str,
        req: Request,
        amount: int,
        cfg: Config,
        floor: int,
        marks: Watermarks | None,
        why: str,
        expect_used: int | None = None,
        spare: int = 0,
        headroom: int = 0,
        hook: bool = False,
    ) -> int:
        """Take up to `amount` from the guest in safe steps; returns what was taken. Stops
        early when a step finds the guest's `used` grown past `expect_used` (+8 MiB): the
        plan was made for a guest that is not there any more."""
        done = 0
        async with self.lock(name):
            while amount - done >= NUDGE_STEP:
                entry = self.ledger.entries.get(name)
                if entry is None or not entry.certain:
                    break
                try:
                    mem = await observe.meminfo(req)
                except (WardenError, OSError):
                    break  # silent now: nothing was asked, nothing is uncertain
                view = GuestInput(
                    name,
                    max=entry.max,
                    floor=floor,
                    plugged=entry.hi,
                    mem=mem,
                    marks=marks,
                    hook=hook,
                    headroom=headroom,
                )
                if expect_used is not None and used_of(view) > expect_used + GROWN:
                    break
                step = unplug_step(
                    mem, marks, amount - done, entry.hi - must_of(view, cfg), cfg, spare
                )
                if step == 0:
                    break
                try:
                    self.ledger.begin_unplug(name, step)
                except LedgerError:
                    break
                took = await self._config(req, name, "unplug", step, why)
                if took is None:
                    await self._reconcile_locked(name, req)
                    break
                done += took
                if took < step:
                    break  # the kernel stopped at its low watermark: the guest grew
        return done

    async def plug(self, name: str, req: Request, amount: int, why: str, urgent: bool) -> int:
        """Give up to `amount` back, as far as the budget allows; returns what was given."""
        async with self.lock(name):
            entry = self.ledger.entries.get(name)
            if entry is None or not entry.certain:
                return 0
            room = self.ledger.free(include_holds=not urgent)
            amount = pages(min(amount, room, entry.max - entry.hi))
            if amount < MIN_STEP and not (urgent and amount > 0):
                return 0
            try:
                self.ledger.begin_plug(name, amount, use_holds=urgent)
            except LedgerError:
                return 0
            gave = await self._config(req, name, "plug", amount, why)
            if gave is None:
                await self._reconcile_locked(name, req)
                return 0
            return gave

    async def reconcile(self, name: str, req: Request) -> bool:
        async with self.lock(name):
            return await self._reconcile_locked(name, req)

    async def _reconcile_locked(self, name: str, req: Request) -> bool:
        """Settle the entry from the guest's own counters; False if the guest is silent.

        The guest runs queued mconsole requests last-in first-out (mc_work_proc takes the
        head of a list that mconsole_interrupt adds to at the head), so a reading right after
        a late `config` may still precede it: read until two readings agree."""
        entry = self.ledger.entries.get(name)
        if entry is None:
            return False
        last: int | None = None
        est = 0
        for _ in range(RECONCILE_READS):
            try:
                mem = await observe.meminfo(req)
            except (WardenError, OSError):
                return False
            est = estimate_plugged(mem, entry.max, entry.baseline)
            if last is not None and abs(est - last) <= RECONCILE_AGREE:
                break
            last = est
            await asyncio.sleep(0.05)
        else:
            return False
        lo, hi, now = self.ledger.reconcile(name, est)
        self.record(
            "ev",
            g=name,
            what="reconcile",
            lo=lo // 1024,
            hi=hi // 1024,
            est=est // 1024,
            now=now // 1024,
        )
        return True
