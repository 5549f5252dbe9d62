"""The daemon's session-log service: hands each line a SessionLog, relays each kernel's stdout
and stderr into its kernel log, and owns the writer thread.

Its boot hooks (called by warden.console.feature): a launched kernel gets a KernelRelay on its
FIFO, an exited one's is drained and closed; a new daemon re-opens the relays of the guests
that outlived the last one and stores what the others left in their FIFOs.
"""

import logging
import threading
from typing import Any

from warden.console.kernellog import KernelLogFile, KernelRelay, cap_for, kernel_log_path
from warden.daemon import kernelout
from warden.daemon import machine as m
from warden.daemon.lines import LineLog, NullLog
from warden.daemon.seam import BootExtras, Core, Guest
from warden.sessionlog import store as logstore
from warden.sessionlog.writer import GuestUsage, SessionLog, SessionLogWriter

log = logging.getLogger("warden.sessionlog")


class LogService:
    def __init__(self, core: Core):
        self.core = core
        self.layout = core.layout
        self.key = logstore.load_key(self.layout, create=True)
        self.writer = SessionLogWriter(self.key, self.layout.machines)
        self._usage: dict[str, GuestUsage] = {}
        self._lock = threading.Lock()
        self.relays: dict[str, KernelRelay] = {}

    def factory(self, machine: str, line: str, boot: int, reattach: bool) -> LineLog:
        """The daemon's LogFactory (seam.Core.logs)."""
        if not self.core.fleet.logs.enabled:
            return NullLog()
        return SessionLog(
            self.writer, machine, line, boot, reattach, lambda: self._usage_for(machine)
        )

    def _usage_for(self, machine: str) -> GuestUsage:
        """Called by the writer thread when it opens a file of `machine`."""
        with self._lock:
            u = self._usage.get(machine)
            busy = any(lg.machine == machine for lg in self.writer.open_logs) or any(
                getattr(o, "machine", None) == machine for o in self.writer.open_other
            )
            if u is None or not busy:
                # Nothing of this guest is open: count from the disk again (its logs may have
                # been archived by `warden destroy`, or the quota changed).
                u = GuestUsage(self.layout.machine(machine) / "logs", self.core.fleet.logs.quota)
                self._usage[machine] = u
            return u

    # ---- kernel logs ------------------------------------------------------------------------
    def _relay(self, sup: Guest, boot: int) -> KernelRelay:
        logs = self.core.fleet.logs
        name = sup.name

        def usage() -> GuestUsage | None:
            # With session logs off the kernel log still has its cap; there is no guest total.
            return self._usage_for(name) if logs.enabled else None

        def report(info: dict[str, Any]) -> None:
            self.core.event(name, "kernel-log-quota", boot=boot, **info)

        f = KernelLogFile(
            self.writer, name, kernel_log_path(sup.files.logs, boot), cap_for(logs.quota), usage
        )
        return KernelRelay(kernelout.fifo(sup.files), f, report)

    def _open_relay(self, sup: Guest) -> None:
        old = self.relays.pop(sup.name, None)
        if old is not None:
            old.close(drain=False)
        relay = self._relay(sup, sup.boot)
        try:
            relay.start()
        except OSError as e:
            log.error(
                "%s: cannot read its kernel's output (%s): nothing of it is kept", sup.name, e
            )
            relay.close(drain=False)
            return
        self.relays[sup.name] = relay

    def _drain(self, sup: Guest) -> None:
        """What a kernel that is gone left in its FIFO, into its boot's kernel log."""
        if sup.boot > 0 and kernelout.fifo(sup.files).exists():
            self._relay(sup, sup.boot).drain_once()

    async def before_boot(self, sup: Guest, extras: BootExtras) -> None:
        # A launch that fails: the launcher wrote why into the FIFO.
        extras.cleanup.append(lambda: self._drain(sup))

    async def after_launch(self, sup: Guest, pid: int) -> None:
        self._open_relay(sup)

    async def after_exit(self, sup: Guest) -> None:
        relay = self.relays.pop(sup.name, None)
        if relay is not None:
            relay.close(drain=True)

    # ---- the service ------------------------------------------------------------------------
    async def start(self) -> None:
        self.writer.finalize_stale()
        for sup in self.core.guests:
            if sup.state in m.LIVE and sup.pid is not None:
                self._open_relay(sup)  # re-attached: the kernel outlived the last daemon
            else:
                self._drain(sup)

    async def stop(self) -> None:
        # Lines still log until the guests are stopped or detached; the thread ends by itself
        # once the last file is closed. Kernels that stay keep writing into their FIFOs.
        for name in list(self.relays):
            self.relays.pop(name).close(drain=False)
        self.writer.stop()

    def fleet_changed(self) -> None:
        quota = self.core.fleet.logs.quota
        with self._lock:
            for u in self._usage.values():
                u.quota = quota
