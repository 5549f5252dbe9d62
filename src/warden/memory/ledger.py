"""The ledger: how much memory each guest has plugged, kept by warden because UML cannot say.

Pure bookkeeping, no I/O. Each entry holds a range [lo, hi]: equal when warden knows, apart
while an mconsole action is in flight or after one failed (a timed-out `config mem=-N` may
still run later, partly or wholly). The budget is always checked against `hi`, so the sum of
plugged memory can be overestimated but never under: that is what keeps
sum(plugged) <= budget true at every instant.

Order of operations, for an action of N bytes:
    unplug: begin (lo -= N) -> mconsole -> success: hi -= N | failure: stay uncertain
    plug:   begin (hi += N, refused if the budget has no room) -> mconsole -> lo += N | ...
An uncertain entry is settled by `reconcile` with an estimate from the guest's meminfo
(docs/formats/memlog.md).

A guest whose kernel has the OOM hook (kernel/0004) also holds a credit: memory it may plug
back by itself, at once, when it would otherwise run out. The credit is in the budget from
the moment it is granted (a guest counts min(max, hi + credit)); a plug back moves memory from
the credit to plugged and leaves that sum alone, so the budget holds while the host has not
heard of it yet. The kernel's counters (`oomplug`) settle both exactly (`apply`).
"""

from dataclasses import dataclass, field

from warden.errors import WardenError
from warden.memory.hook import Counters
from warden.memory.procfs import PAGE, Meminfo
from warden.units import format_size

DEFAULT_BASELINE = 4 << 20  # unaccounted memory of a fresh guest when it was not measured
SNAP = 8 << 20  # an estimate this close to lo or hi confirms that end


class LedgerError(WardenError):
    """An action the budget or the accounting does not allow."""


def pages(n: int) -> int:
    """`n` bytes rounded down to whole pages (mconsole takes memory page by page)."""
    return max(0, n) // PAGE * PAGE


@dataclass
class Entry:
    max: int  # the boot size: the most this boot can ever have plugged
    lo: int
    hi: int
    booting: bool = True  # launched, not yet up: no sample, no action
    baseline: int | None = None
    pid: int | None = None
    pid_start: int | None = None
    pin: int | None = None
    doubt: str = ""  # why lo != hi (the failed action), for `warden top`
    hook: bool = False  # its kernel plugs memory back by itself when out of it (credit)
    credit: int = 0  # granted to that hook and not yet plugged back
    selfplugged: int = 0  # the hook's count of what it plugged back, as last accounted

    @property
    def certain(self) -> bool:
        return self.lo == self.hi

    @property
    def ceiling(self) -> int:
        """The most this guest may have plugged without asking: what the budget counts."""
        return min(self.max, self.hi + self.credit) if self.credit else self.hi

    @property
    def plugged(self) -> int:
        """The budget's view: the most the guest may have."""
        return self.hi


@dataclass
class Ledger:
    budget: int
    entries: dict[str, Entry] = field(default_factory=dict)
    holds: dict[str, int] = field(default_factory=dict)  # budget promised to booting guests

    # ---- totals -------------------------------------------------------------------------
    def total(self) -> int:
        return sum(e.ceiling for e in self.entries.values())

    def credit(self) -> int:
        """The budget held as credit by guests' OOM hooks (the emergency reserve in use)."""
        return sum(e.ceiling - e.hi for e in self.entries.values())

    def held(self) -> int:
        return sum(self.holds.values())

    def free(self, include_holds: bool = True) -> int:
        """Budget nobody has plugged (and, by default, nobody was promised)."""
        return self.budget - self.total() - (self.held() if include_holds else 0)

    def entry(self, name: str) -> Entry:
        e = self.entries.get(name)
        if e is None:
            raise LedgerError(f"{name}: the balancer does not track this guest (is it running?)")
        return e

    # ---- boots --------------------------------------------------------------------------
    def boot(self, name: str, size: int) -> Entry:
        """A guest is about to be launched with mem=`size`: it will have all of it plugged."""
        self.holds.pop(name, None)
        if size > self.free():
            raise LedgerError(
                f"{name}: booting needs {format_size(size)} of the budget free and only "
                f"{format_size(max(0, self.free()))} is (budget {format_size(self.budget)}, "
                f"plugged {format_size(self.total())}, promised to other boots "
                f"{format_size(self.held())})"
            )
        e = Entry(max=size, lo=size, hi=size)
        self.entries[name] = e
        return e

    def up(self, name: str, size: int) -> Entry:
        """The kernel (re)started: it has its whole boot size again (a reboot re-execs UML)."""
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(max=size, lo=size, hi=size)
        e.max = size
        e.lo = e.hi = size
        e.booting = False
        e.doubt = ""
        e.credit = e.selfplugged = 0  # a new kernel: nothing granted, nothing plugged back
        return e

    def adopt(self, name: str, size: int, lo: int | None, hi: int | None) -> Entry:
        """A guest found running by a new daemon. Without a trusted record its plugged size is
        anywhere in [0, size]: counted in full (hi = size) until an estimate settles it."""
        if lo is None or hi is None:
            e = Entry(max=size, lo=0, hi=size, booting=False, doubt="found without a record")
        else:
            e = Entry(max=size, lo=lo, hi=hi, booting=False)
            if lo != hi:
                e.doubt = "recorded as uncertain"
        self.entries[name] = e
        return e

    def release(self, name: str) -> None:
        self.entries.pop(name, None)
        self.holds.pop(name, None)

    # ---- actions ------------------------------------------------------------------------
    def begin_unplug(self, name: str, amount: int) -> Entry:
        e = self.entry(name)
        if amount <= 0 or amount % PAGE:
            raise LedgerError(f"{name}: unplug of {amount} bytes (must be whole pages, > 0)")
        if not e.certain:
            raise LedgerError(f"{name}: plugged size is uncertain ({e.doubt}); reconcile first")
        if amount > e.lo:
            raise LedgerError(f"{name}: cannot unplug {format_size(amount)} of {format_size(e.lo)}")
        e.lo -= amount
        return e

    def end_unplug(
        self, name: str, amount: int, ok: bool, why: str = "", done: int | None = None
    ) -> None:
        """`done`: what the kernel says it took (a kernel with the OOM hook stops at the low
        watermark and says so; a stock kernel says nothing and is taken at its word)."""
        e = self.entries.get(name)
        if e is None:
            return
        if ok:
            took = amount if done is None else min(amount, pages(done))
            e.hi -= took
            e.lo += amount - took
        else:
            e.doubt = why or "unplug failed"

    def begin_plug(self, name: str, amount: int, use_holds: bool = False) -> Entry:
        e = self.entry(name)
        if amount <= 0 or amount % PAGE:
            raise LedgerError(f"{name}: plug of {amount} bytes (must be whole pages, > 0)")
        if not e.certain:
            raise LedgerError(f"{name}: plugged size is uncertain ({e.doubt}); reconcile first")
        if e.hi + amount > e.max:
            raise LedgerError(
                f"{name}: plugging {format_size(amount)} would pass its boot size "
                f"{format_size(e.max)} (has {format_size(e.hi)})"
            )
        room = self.free(include_holds=not use_holds)
        if amount > room:
            raise LedgerError(
                f"{name}: plugging {format_size(amount)} would pass the budget "
                f"({format_size(max(0, room))} free)"
            )
        e.hi += amount
        return e

    def end_plug(
        self, name: str, amount: int, ok: bool, why: str = "", done: int | None = None
    ) -> None:
        e = self.entries.get(name)
        if e is None:
            return
        if ok:
            gave = amount if done is None else min(amount, pages(done))
            e.lo += gave
            e.hi -= amount - gave
        else:
            e.doubt = why or "plug failed"

    # ---- the OOM hook's credit ----------------------------------------------------------------
    def begin_grant(self, name: str, amount: int) -> Entry:
        """Count a credit before it is sent (a grant is urgent: promised boots wait)."""
        e = self.entry(name)
        if amount <= 0 or amount % PAGE:
            raise LedgerError(f"{name}: credit of {amount} bytes (must be whole pages, > 0)")
        if e.hi + e.credit + amount > e.max:
            raise LedgerError(
                f"{name}: a credit of {format_size(amount)} would pass its boot size "
                f"{format_size(e.max)} (has {format_size(e.hi)} and {format_size(e.credit)} "
                "of credit)"
            )
        room = self.free(include_holds=False)
        if amount > room:
            raise LedgerError(
                f"{name}: a credit of {format_size(amount)} would pass the budget "
                f"({format_size(max(0, room))} free)"
            )
        e.credit += amount
        return e

    def apply(self, name: str, c: Counters) -> int:
        """Take the hook's counters (an `oomplug` reply) into the books; returns what it
        plugged back since they were last taken. Exact when no credit command is in flight
        (the caller serializes them): the reply was made after everything sent before it."""
        e = self.entry(name)
        back = max(0, c.plugged - e.selfplugged)
        e.selfplugged = c.plugged
        e.hi = min(e.max, e.hi + back)
        e.lo = min(e.max, e.lo + back)
        e.credit = c.credit
        return back

    def settle(self, name: str, c: Counters) -> tuple[int, int] | None:
        """With no plug or unplug in flight (the caller holds the guest's lock): plugged from
        the kernel's own count of unplugged memory. Returns (hi before, now) when it moved."""
        e = self.entry(name)
        now = max(0, e.max - c.unplugged)
        if e.certain and now == e.hi:
            return None
        before = e.hi
        e.lo = e.hi = now
        e.doubt = ""
        return before, now

    def reconcile(self, name: str, estimate: int) -> tuple[int, int, int]:
        """Settle an entry from an estimate of its plugged size; returns (lo, hi, now)."""
        e = self.entry(name)
        lo, hi = e.lo, e.hi
        est = min(e.max, max(0, estimate))
        if abs(est - hi) <= SNAP and (abs(est - hi) <= abs(est - lo)):
            now = hi
        elif abs(est - lo) <= SNAP:
            now = lo
        else:
            # Neither end: a partial action, or drift (an admin's own `config mem`). Round up
            # to a MiB: the estimate's error is within 2 MiB and the budget must not be under.
            now = min(e.max, -(-est // (1 << 20)) * (1 << 20))
        e.lo = e.hi = now
        e.doubt = ""
        return lo, hi, now


def estimate_plugged(mem: Meminfo, size: int, baseline: int | None) -> int:
    """What a guest has plugged, from its meminfo alone (docs/formats/memlog.md)."""
    base = DEFAULT_BASELINE if baseline is None else baseline
    unplugged = max(0, mem.unaccounted - base)
    return max(0, size - unplugged)
