"""The balancer's side of the OOM hook (kernel/0004): arming each hooked guest's credit,
hints (a MEMORY notify), rescues of a guest that ran out, and the denial of a wait no plan
can serve. See docs/decisions/2026-12-07-memory-never-kills.md. A part of the Balancer
(memory/balancer.py).
"""

import asyncio
import time

from warden.daemon import machine as m
from warden.daemon.seam import Guest
from warden.memory.hook import Counters, hint_waiting
from warden.memory.ledger import pages
from warden.memory.policy import MIB, Plan
from warden.memory.procfs import PAGE
from warden.memory.state import BalancerState
from warden.tasks import spawn

RESCUE_MIN = 32 * MIB  # the least credit a guest that ran out is granted again at once...
RESCUE_HORIZON = 0.1  # ...or this long of the fleet's fastest growth, if more
RESCUE_GAP = 0.005  # seconds between two rescues of one guest (hints may come in floods)
DENY_AFTER = 2.0  # seconds a guest waits in its OOM hook before a hopeless wait is ended


class Rescues(BalancerState):
    async def _arm(self, plan: Plan, running: dict[str, Guest]) -> None:
        """The plan's credits (each hooked guest's share of the reserve; what it takes back
        first), then what guests that ran out are still owed."""
        for c in sorted(plan.credits, key=lambda c: c.amount):
            sup = running.get(c.guest)
            w = self._seen(c.guest)
            if sup is None or w.silent or w.emergency:
                continue
            if c.amount < 0 and self._rescuing(c.guest):
                continue  # a rescue may just have granted it; a later calm plan takes it
            await self.act.credit(c.guest, sup.request_intr, c.amount, c.why)
            self._dirty = True
        for name in [n for n, w in self.watches.items() if w.emergency]:
            sup = running.get(name)
            if sup is None:
                self._w(name).emergency = 0
            else:
                self._start_rescue(name, sup)

    def _rescuing(self, name: str) -> bool:
        w = self._seen(name)
        return w.hinted or (w.rescue is not None and not w.rescue.done())

    def _start_rescue(self, name: str, sup: Guest) -> None:
        w = self._w(name)
        w.hinted = True
        if w.rescue is None or w.rescue.done():
            w.rescue = spawn(self._rescue(name, sup), f"memory-rescue:{name}")

    def memory_notified(self, sup: Guest, data: bytes) -> None:
        """A MEMORY notify from the guest's kernel: a hint, never trusted. It only makes the
        balancer ask the kernel itself, one rescue at a time per guest (hints coalesce)."""
        name = sup.name
        e = self.ledger.entries.get(name)
        if e is None or not e.hook or sup.state is not m.State.RUNNING:
            return
        if hint_waiting(data):
            self._w(name).hot_until = time.monotonic() + self.cfg.hold
        self._start_rescue(name, sup)

    def _rescue_size(self, c: Counters) -> int:
        """The credit a guest that ran out holds again: RESCUE_MIN, or what the fleet's
        fastest growth fills in RESCUE_HORIZON if more, up to all it has unplugged."""
        return pages(min(c.unplugged, max(RESCUE_MIN, int(self.fastest * RESCUE_HORIZON))))

    async def _rescue(self, name: str, sup: Guest) -> None:
        while self._seen(name).hinted:
            w = self._w(name)
            w.hinted = False
            before = w.counters
            c = await self.act.sync(name, sup.request_intr)
            e = self.ledger.entries.get(name)
            if c is None or e is None:
                return
            w = self._w(name)
            w.counters = c
            if before is not None and c.plugged > before.plugged:
                # It ran out: plan for it now, as an emergency (its MemAvailable shows what the
                # credit gave, not what it is filling), not at the next watch tick.
                w.plugged_back = True
                w.hot_until = time.monotonic() + self.cfg.hold
                self._wake.set()
            want = self._rescue_size(c)
            room = min(self.ledger.free(include_holds=False), e.max - e.hi - e.credit)
            amount = pages(min(want - e.credit, room))
            if amount >= PAGE:
                got = await self.act.credit(name, sup.request_intr, amount, "it ran out of memory")
                c = got or c
                if got is not None:
                    self._w(name).counters = got
            owed = pages(want - e.credit)
            w = self._w(name)
            if not c.waiting:
                w.waiting_since = None
            elif w.waiting_since is None:
                w.waiting_since = time.monotonic()
            if c.waiting and owed >= PAGE and c.unplugged > e.credit:
                # It waits and nothing is free in the budget now: the next plan makes room for
                # it (a hold), and the tick after grants it (or, if the working sets alone
                # fill the budget, a denial ends the wait).
                w.emergency = owed
                self._wake.set()
            else:
                w.emergency = 0
            self._dirty = True
            await asyncio.sleep(RESCUE_GAP)

    async def _deny_hopeless(self, running: dict[str, Guest]) -> None:
        """A guest that has waited in its OOM hook for DENY_AFTER while nothing could serve
        it: the working sets alone (every guest's `must`, the plugged size of those not
        assessed, the boots promised) leave the budget no page for it, and nothing is being
        unplugged. Its own OOM killer must run now, not after the hook's 10 s. Anything less
        certain waits: the hook waits for a grant, and one comes once a neighbour is cut
        (a guest that fills beside others is served when they stop growing)."""
        waiting = {
            n: w.waiting_since for n, w in self.watches.items() if w.waiting_since is not None
        }
        if not waiting or self.acting:
            return
        now = time.monotonic()
        need = self.ledger.held()
        for n, e in self.ledger.entries.items():
            a = self._seen(n).assessed
            need += a.must if a is not None else e.hi
        if need + len(waiting) * MIB <= self.ledger.budget:
            return
        for name, since in waiting.items():
            sup = running.get(name)
            if sup is not None and now - since >= DENY_AFTER:
                await self.act.deny(name, sup.request_intr, "the working sets fill the budget")
                w = self.watches.get(name)
                if w is not None:
                    w.waiting_since, w.emergency = None, 0
