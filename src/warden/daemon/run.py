"""Running the daemon in the foreground: `warden daemon` and `warden up FLEET`.

One daemon per WARDEN_HOME, enforced with an flock on run/daemon.lock. `warden daemon` leaves
guests running when it is told to stop (they outlive it; the next daemon re-attaches);
`warden up` stops every guest cleanly on Ctrl-C or SIGTERM, then exits.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from warden.api.server import Api
from warden.daemon.core import Daemon
from warden.errors import Conflict
from warden.paths import Layout
from warden.tasks import spawn


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
    from warden import termsafe

    who = ev.get("machine") or "warden"
    kind = ev.get("kind", "?")
    rest = termsafe.fields({k: v for k, v in ev.items() if k not in ("machine", "kind")})
    print(f"{termsafe.line(who)}: {termsafe.line(kind)} {rest}".rstrip(), file=out, flush=True)


async def serve(layout: Layout, fleet_path: Path | None, stop_guests_on_exit: bool) -> int:
    lock = _lock(layout)
    daemon = Daemon(layout)
    api = Api(daemon)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        await api.start()
        q = daemon.c.bus.subscribe() if fleet_path is not None else None
        if fleet_path is not None:
            report = daemon.apply(fleet_path.read_text(), str(fleet_path))
            print(
                f"warden: fleet {fleet_path}: {len(daemon.sups)} machines "
                f"({', '.join(report['started']) or 'none'} starting); Ctrl-C stops them all",
                flush=True,
            )
        printer = None
        if q is not None:

            async def show() -> None:
                while True:
                    _print_event(await q.get(), sys.stdout)

            printer = spawn(show(), "event-printer")
        await stop.wait()
        if printer is not None:
            printer.cancel()
        if stop_guests_on_exit:
            live = [s.name for s in daemon.sups.values() if s.machine.pid]
            print(f"warden: stopping {len(live)} guests", flush=True)
        await daemon.shutdown(stop_guests=stop_guests_on_exit)
    finally:
        await api.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        os.close(lock)
    return 0


def run(layout: Layout, fleet_path: Path | None, stop_guests_on_exit: bool) -> int:
    logging.basicConfig(
        level=os.environ.get("WARDEN_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(layout, fleet_path, stop_guests_on_exit))
    return 130
