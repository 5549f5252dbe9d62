"""What the balancer knows of one guest between ticks: one record per guest.

The balancer keeps a `Watch` per guest it has seen since the guest's boot began, and drops it
whole when that boot ends (`Balancer._release`: one `pop`), so nothing of an exited guest is
left behind for its next boot to trip on. Unplugs in flight are not in it: they outlive the
boot they started in (the ledger must hear what they did), so the balancer keeps them apart.
"""

import asyncio
from dataclasses import dataclass

from warden.memory.hook import Counters
from warden.memory.policy import Assessment, Memo
from warden.memory.procfs import Meminfo, Vmstat, Watermarks


@dataclass
class Watch:
    memo: Memo | None = None  # the policy's memory of it, from the last plan
    mem: Meminfo | None = None  # its latest meminfo (None: not observable now)
    vm: Vmstat | None = None  # its latest vmstat (full ticks)
    marks: Watermarks | None = None  # its kernel's watermarks (None: the rule of thumb)
    host_usage: int | None = None  # its cgroup's memory on the host
    settle: float | None = None  # monotonic time its baseline is due (None: taken)
    silent: bool = False  # it stopped answering...
    probe: "asyncio.Task[None] | None" = None  # ...and this asks it aside until it answers
    hot_until: float = 0.0  # read on every watch tick until then
    last_read: float = 0.0
    # Its latest assessment: a plan holds only the guests read in its tick (a quiet guest is
    # not read on every watch tick; one with an unplug in flight is not).
    assessed: Assessment | None = None
    counters: Counters | None = None  # its hooked kernel's latest `oomplug` reply
    hinted: bool = False  # its MEMORY notify awaits a rescue
    rescue: "asyncio.Task[None] | None" = None
    emergency: int = 0  # credit owed to it, out of memory (a hold); 0: none
    waiting_since: float | None = None  # when it was first seen waiting in its OOM hook
    plugged_back: bool = False  # its hook plugged back since the last plan

    def cancel(self) -> None:
        """Its boot is over: stop the tasks that ask it."""
        for task in (self.probe, self.rescue):
            if task is not None:
                task.cancel()
