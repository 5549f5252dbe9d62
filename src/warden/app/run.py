"""Running the daemon in the foreground: `warden daemon` and `warden up FLEET`.

One daemon per WARDEN_HOME, enforced with an flock on run/daemon.lock. `warden daemon` leaves
guests running when it is told to stop (they outlive it; the next daemon re-attaches);
`warden up` stops every guest cleanly on Ctrl-C, SIGTERM or SIGHUP, then exits, whatever
became of its stdout and stderr meanwhile (`warden up | tee log`: the same Ctrl-C kills tee).
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from warden import termsafe
from warden.app.compose import build
from warden.app.web import greeting
from warden.cluster.agent import ClusterConfig
from warden.daemon.core import FleetFile
from warden.errors import Conflict, WardenError
from warden.paths import Layout
from warden.tasks import spawn
from warden.web.server import WebServer


def _lock(layout: Layout) -> int:
    layout.run.mkdir(parents=True, exist_ok=True)
    path = layout.run / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = Path(path).read_text().strip() or "?"
        os.close(fd)
        raise Conflict(
            f"a warden daemon (pid {other}) already runs for {layout.home}; "
            "use the CLI against it, or stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _print_event(ev: dict[str, Any], out: TextIO) -> None:
    # Events carry guest text (USER_NOTIFY messages, panic reasons): escaped for the terminal.
    who = ev.get("machine") or "warden"
    kind = ev.get("kind", "?")
    rest = termsafe.fields({k: v for k, v in ev.items() if k not in ("machine", "kind")})
    print(f"{termsafe.line(who)}: {termsafe.line(kind)} {rest}".rstrip(), file=out, flush=True)


# Signals that end the daemon. SIGHUP is a closed terminal window (or ssh session): `warden up`
# must then stop its fleet as on Ctrl-C, not die of the default action and leave it running.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _to_devnull(fd: int) -> None:
    """Point `fd` at /dev/null: whatever was behind it (a pipe whose reader died of the same
    Ctrl-C, a terminal that was closed) is gone, and no later write may fail."""
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _write(out: TextIO, fn: Callable[..., None], *args: Any) -> None:
    """Run `fn(*args)`, which writes to `out`; if the writing fails (EPIPE, EIO), `out` goes
    to /dev/null from then on. What the daemon prints is for the user; stopping the fleet must
    never depend on it."""
    try:
        fn(*args)
    except OSError:
        _to_devnull(out.fileno())
        with contextlib.suppress(OSError, ValueError):
            out.flush()  # drops what was buffered for the vanished reader


def _say(text: str, out: TextIO | None = None) -> None:
    stream = out if out is not None else sys.stdout
    _write(stream, _print_line, text, stream)


def _print_line(text: str, out: TextIO) -> None:
    print(text, file=out, flush=True)


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose stream may vanish: then its log lines go to /dev/null."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            with contextlib.suppress(OSError, ValueError):
                _to_devnull(self.stream.fileno())
            return
        super().handleError(record)


async def serve(
    layout: Layout,
    fleet_path: Path | None,
    stop_guests_on_exit: bool,
    prune: bool = False,
    cluster: ClusterConfig | None = None,
) -> int:
    lock = _lock(layout)
    app = build(layout, cluster)
    daemon, api = app.daemon, app.api
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    up = None
    if fleet_path is not None:
        up = FleetFile(fleet_path.read_text(), str(fleet_path), prune)
    printer = None
    # Whatever happens from here on (a refused fleet, a failed start, an output gone), the
    # finally block stops what was started: the guests of `up`, the services, the API.
    refused = True
    try:
        await daemon.open(fallback=up)
        if up is not None:
            q = daemon.ctx.bus.subscribe()

            async def show() -> None:
                while True:
                    _write(sys.stdout, _print_event, await q.get(), sys.stdout)

            printer = spawn(show(), "event-printer")
        report = await daemon.start(up)
        refused = False
        await api.start()
        if report is not None:
            _say(
                f"warden: fleet {fleet_path}: {len(daemon.sups)} machines "
                f"({', '.join(report['started']) or 'none'} starting); Ctrl-C stops them all"
            )
            for text in await _web_greeting(app.web):
                _say(text)
        await stop.wait()
    finally:
        if printer is not None:
            printer.cancel()
        # A refused `up` started no guest: the guests that outlived an earlier daemon are left
        # as they were.
        stop_guests = stop_guests_on_exit and not refused
        if stop_guests:
            live = [s.name for s in daemon.sups.values() if s.machine.pid]
            _say(f"warden: stopping {len(live)} guests")
        await daemon.shutdown(stop_guests=stop_guests)
        await api.stop()
        if stop_guests:  # the last line a user of `warden up` sees says it is over
            left = [s.name for s in daemon.sups.values() if s.machine.pid]
            _say(
                f"warden: stopped; still running: {', '.join(left)}"
                if left
                else "warden: stopped; no guest is left running"
            )
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        os.close(lock)
    return 0


async def _web_greeting(web: WebServer) -> list[str]:
    """The web console's login link for whoever ran `warden up` (none without [web])."""
    try:
        return await greeting(web, pwd.getpwuid(os.getuid()).pw_name)
    except (WardenError, KeyError) as e:
        return [f"warden: web console: no login link: {e}"]


def run(
    layout: Layout,
    fleet_path: Path | None,
    stop_guests_on_exit: bool,
    prune: bool = False,
    cluster: ClusterConfig | None = None,
) -> int:
    handler = _LogHandler(sys.stderr)
    # Log records quote guest strings (exception messages): escaped like every other output.
    handler.setFormatter(termsafe.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=os.environ.get("WARDEN_LOG", "INFO"), handlers=[handler])
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(layout, fleet_path, stop_guests_on_exit, prune, cluster))
    return 130
