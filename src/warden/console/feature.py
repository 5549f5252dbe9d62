"""The console feature: session logs for every terminal line, kernel logs, the SSH concentrator.

- every terminal line gets a SessionLog (docs/formats/session-log.md): the composition root
  makes `line_log` the core's log factory (seam.Core.logs), which the honeypot's tty log uses
  too;
- the log service closes logs a previous daemon left open, relays each kernel's output into
  its kernel log, and owns the writer thread;
- the concentrator listens on the fleet file's [concentrator] listen address;
- for the API: `flush` (readers that want live files up to date), `sessions`.

Its `start` closes every log nobody re-opened (finalize_stale): it must come after the features
that re-open logs of re-attached guests (the honeypot's tty logs) in the composition root.
"""

import asyncio
from typing import Any

from warden.console.concentrator import Concentrator
from warden.console.logservice import LogService
from warden.daemon.lines import LineLog
from warden.daemon.seam import BootExtras, Core, Feature, Guest


class ConsoleFeature(Feature):
    name = "console"

    def __init__(self, core: Core):
        self.logs = LogService(core)
        self.concentrator = Concentrator(core)

    def line_log(self, machine: str, line: str, boot: int, reattach: bool) -> LineLog:
        return self.logs.factory(machine, line, boot, reattach)

    # ---- life cycle
    async def start(self) -> None:
        await self.logs.start()
        await self.concentrator.start()

    async def stop(self) -> None:
        try:
            await self.concentrator.stop()
        finally:
            await self.logs.stop()

    def fleet_changed(self) -> None:
        self.logs.fleet_changed()
        self.concentrator.fleet_changed()

    # ---- boots: the kernel log's relay
    async def before_boot(self, guest: Guest, extras: BootExtras) -> None:
        await self.logs.before_boot(guest, extras)

    async def after_launch(self, guest: Guest, pid: int) -> None:
        await self.logs.after_launch(guest, pid)

    async def after_exit(self, guest: Guest) -> None:
        await self.logs.after_exit(guest)

    async def flush(self) -> None:
        await self.flush_logs(30.0)

    # ---- what the API serves
    async def flush_logs(self, timeout: float) -> bool:
        """Wait (off the loop) until every queued record is written and closed files compressed."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.logs.writer.flush, timeout)

    def sessions(self) -> dict[str, Any]:
        conc = self.concentrator
        out = [
            {
                "user": s.user,
                "source": s.source,
                "machine": s.attached,
                "line": s.line.name if s.line is not None else None,
                "writer": bool(s.client is not None and s.client.writer),
            }
            for s in conc.sessions
            if s.attached is not None
        ]
        return {"listen": conc.listen, "port": conc.port, "sessions": out}
