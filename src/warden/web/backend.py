"""What the web console needs of the daemon, and nothing more (warden.app.web provides it).

The web console is a front end: it reads the fleet and the guests' state, attaches clients to
terminal lines (warden.daemon.lines, the same Line an SSH session attaches to), asks for the
four actions a guest page offers, reads the balancer's numbers and the incident timeline, and
listens to the daemon's events. Every other file it reads (session logs, the balancer's log) it
reads from WARDEN_HOME like the CLI does.
"""

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from warden.daemon.lines import Line
from warden.paths import Layout
from warden.spec.fleet import Fleet


class Backend(Protocol):
    @property
    def layout(self) -> Layout: ...

    @property
    def fleet(self) -> Fleet:
        """The fleet in force (fleet_changed() on the server says when it changes)."""

    def infos(self) -> Mapping[str, Mapping[str, Any]]:
        """Every guest's row of `warden ls`, by name (cheap: no I/O)."""

    def line(self, machine: str, line: str) -> Line | None:
        """The terminal line a console attaches to; None if there is no such guest or line."""

    def attached(self) -> Mapping[str, int]:
        """Clients attached to each guest's lines (SSH, web and `warden console` alike)."""

    async def action(self, machine: str, action: str) -> None:
        """start, stop, kill or reset, without waiting for the guest (WardenError if refused)."""

    def memory(self) -> Mapping[str, Any] | None:
        """The balancer's snapshot (what `warden top` shows), or None without a balancer."""

    async def timeline(self, machine: str) -> dict[str, Any]:
        """The incident timeline of the guest's latest boot ({"meta", "entries"}), as
        `warden timeline NAME --json` gets it; WardenError when it cannot be built."""

    async def flush_logs(self) -> None:
        """Have the session-log writer put what it has queued into the files."""

    def subscribe(self) -> "asyncio.Queue[dict[str, Any]]":
        """A queue of the daemon's events (a slow reader loses events, never the daemon)."""

    def unsubscribe(self, queue: "asyncio.Queue[dict[str, Any]]") -> None: ...

    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        """Record an event (logins, logouts, refusals), as the concentrator does."""
