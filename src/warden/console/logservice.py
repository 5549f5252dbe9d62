"""The daemon's session-log service: hands each line a SessionLog and owns the writer thread."""

import logging
import threading
from typing import TYPE_CHECKING

from warden.console import logstore
from warden.console.logwriter import GuestUsage, LogWriter, SessionLog
from warden.daemon.lines import LineLog, NullLog

if TYPE_CHECKING:
    from warden.daemon.core import Daemon

log = logging.getLogger("warden.sessionlog")


class LogService:
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.layout = daemon.layout
        self.key = logstore.load_key(self.layout, create=True)
        self.writer = LogWriter(self.key, self.layout.machines)
        self._usage: dict[str, GuestUsage] = {}
        self._lock = threading.Lock()

    def factory(self, machine: str, line: str, boot: int, reattach: bool) -> LineLog:
        """The daemon's LogFactory (daemon/context.py)."""
        if not self.daemon.c.fleet.logs.enabled:
            return NullLog()
        return SessionLog(
            self.writer, machine, line, boot, reattach, lambda: self._usage_for(machine)
        )

    def _usage_for(self, machine: str) -> GuestUsage:
        """Called by the writer thread when it opens a file of `machine`."""
        with self._lock:
            u = self._usage.get(machine)
            busy = any(lg.machine == machine for lg in self.writer.open_logs)
            if u is None or not busy:
                # Nothing of this guest is open: count from the disk again (its logs may have
                # been archived by `warden destroy`, or the quota changed).
                u = GuestUsage(
                    self.layout.machine(machine) / "logs", self.daemon.c.fleet.logs.quota
                )
                self._usage[machine] = u
            return u

    async def start(self) -> None:
        self.writer.finalize_stale()

    async def stop(self) -> None:
        # Lines still log until the guests are stopped or detached; the thread ends by itself
        # once the last file is closed.
        self.writer.stop()

    def fleet_changed(self) -> None:
        quota = self.daemon.c.fleet.logs.quota
        with self._lock:
            for u in self._usage.values():
                u.quota = quota
