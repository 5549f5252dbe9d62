"""A guest's notify socket: a flood source (docs/security.md, "Guest channels").

The kernel sends on it when it comes up, panics, or says something (`mconsole` notifications,
warden's kernel's MEMORY hint). Everything read is bounded by the guest's notify budget
(guestinput.notify_budget: one per Supervisor, for all its boots): over the read budget the
socket is not read for a moment, so the guest's kernel waits in its own sendto and the flood
slows only the guest that sends it; what is refused is counted, and the counts are reported
as one event a window. What a notification means is the Supervisor's (`dispatch`).
"""

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warden import guestinput
from warden.uml import mconsole

# (item, now, budget): what a notification that passed the read budget means to the guest
Dispatch = Callable[[mconsole.Notify | mconsole.Refused, float, guestinput.NotifyBudget], None]


class NotifyChannel:
    def __init__(
        self,
        accept: mconsole.Accept,
        dispatch: Dispatch,
        report: Callable[[str, dict[str, Any]], None],
    ):
        self.accept = accept  # whether a datagram comes from the guest's kernel
        self.dispatch = dispatch
        self.report = report  # (kind, counts): a flood's tally, as an event
        self.budget = guestinput.notify_budget()
        self.listener: mconsole.NotifyListener | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._report: asyncio.TimerHandle | None = None

    def open(self, path: Path) -> mconsole.NotifyListener:
        """Bind the socket (a boot's); the caller sets its owner and mode, then `watch`es."""
        self.close()
        self.listener = mconsole.NotifyListener(path)
        return self.listener

    def watch(self) -> None:
        assert self.listener is not None
        asyncio.get_running_loop().add_reader(self.listener.sock.fileno(), self._notified)

    def close(self) -> None:
        """The boot is over: stop reading, and report what its flood still counts."""
        if self.listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.listener.sock.fileno())
            self.listener.close()
            self.listener = None
        for handle in (self._paused, self._report):
            if handle is not None:
                handle.cancel()
        self._paused = self._report = None
        self._report_flood(force=True)

    def _notified(self) -> None:
        listener = self.listener
        if listener is None:
            return
        budget = self.budget
        now = time.monotonic()
        limit = min(guestinput.NOTIFY_BATCH, budget.read.available(now))
        if limit <= 0:
            self._pause(budget.read.wait(now, guestinput.NOTIFY_BATCH))
            return
        items = listener.read_ready(limit, self.accept)
        budget.read.take(now, len(items))
        if budget.read.available(now) < guestinput.NOTIFY_BATCH:
            # wake up again for a whole batch, not for every datagram the budget frees
            self._pause(budget.read.wait(now, guestinput.NOTIFY_BATCH))
        for item in items:
            self.dispatch(item, now, budget)
        if budget.tally.pending and self._report is None:
            deadline = budget.tally.deadline()
            assert deadline is not None
            self._report = asyncio.get_running_loop().call_later(
                max(0.0, deadline - now), self._report_flood
            )

    def _pause(self, seconds: float) -> None:
        """Over the read budget: stop reading for a moment. The guest's kernel then waits in its
        own sendto (the socket queue is full): the flood slows the guest that sends it."""
        listener = self.listener
        if listener is None or self._paused is not None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.sock.fileno())

        def resume() -> None:
            self._paused = None
            if self.listener is listener:
                loop.add_reader(listener.sock.fileno(), self._notified)

        self._paused = loop.call_later(max(seconds, 0.01), resume)

    def _report_flood(self, force: bool = False) -> None:
        self._report = None
        now = time.monotonic()
        tally = self.budget.tally
        report = tally.flush(now) if force else tally.due(now)
        if report is not None:
            # one a window by construction: not through the guest's event gate, so that
            # the counts always reach the database
            self.report(tally.kind, report)
        if tally.pending and self.listener is not None:
            deadline = tally.deadline()
            assert deadline is not None
            self._report = asyncio.get_running_loop().call_later(
                max(0.0, deadline - now), self._report_flood
            )
