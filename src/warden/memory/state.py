"""What the balancer holds (memory/balancer.py drives it): the fleet's configuration, the
ledger and the actuator, one `Watch` per guest (memory/watch.py), the unplugs in flight, and
its records: the memory log, the recent actions `warden top` shows, the budget's high-water
mark and state.json. The boot hooks (memory/boothooks.py) and the OOM hook's rescues
(memory/rescue.py) work on it too; each is a part of the one Balancer class.
"""

import asyncio
import logging
import time
from collections import deque
from typing import Any

from warden.daemon.seam import Core
from warden.memory.act import Actuator
from warden.memory.ledger import Ledger
from warden.memory.policy import Config, Plan
from warden.memory.record import LogWriter, memory_dir, save_state
from warden.memory.watch import Watch

log = logging.getLogger("warden.memory")


class BalancerState:
    """The balancer's state and records; Balancer (memory/balancer.py) is the whole."""

    def __init__(self, core: Core):
        self.core = core
        self.cfg = Config(budget=0)
        self.ledger = Ledger(budget=0)
        self.act = Actuator(self.ledger, self._record)
        self.watches: dict[str, Watch] = {}  # what is known of each guest (memory/watch.py)
        self.acting: dict[str, asyncio.Task[int]] = {}  # unplugs in flight, by guest
        self.plan: Plan | None = None
        self.host_available: int | None = None
        self.fastest = 0.0  # the fleet's fastest growth of `used` seen (bytes/s)
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

    def _w(self, name: str) -> Watch:
        """The guest's record, made if it has none (to write in)."""
        return self.watches.setdefault(name, Watch())

    def _seen(self, name: str) -> Watch:
        """The guest's record, or an empty one (to read only)."""
        return self.watches.get(name) or Watch()

    def _owed(self) -> int:
        """What guests out of memory are owed (the plans make room for it: a hold)."""
        return sum(w.emergency for w in self.watches.values())

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
            rec: dict[str, Any] = {"p": e.hi // 1024, "h": _kib(self._seen(name).host_usage)}
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


def _kib(n: int | None) -> int | None:
    return None if n is None else n // 1024
