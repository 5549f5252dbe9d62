"""GET /events answers with every event the daemon stored before the request, even when the
store's writer thread is seconds behind (a disk under heavy I/O: CI saw a storage-paused
event missing from `warden events` right after the guest showed paused)."""

import asyncio
import json
import sqlite3
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

from aiohttp.test_utils import make_mocked_request

from warden import tasks
from warden.api import machines
from warden.api.common import Ctx
from warden.paths import Layout
from warden.store import READ_FLUSH_TIMEOUT, Store

HELD = READ_FLUSH_TIMEOUT + 1.5  # longer than the store's own short wait on a read


def _hold_the_database(path: str, started: threading.Event) -> None:
    """Another writer holds the database, as a slow commit would: the writer thread waits."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(HELD)
    db.execute("COMMIT")
    db.close()


def test_events_waits_for_the_writer_thread_off_the_loop(home: Layout) -> None:
    store = Store(home.db)
    try:
        store.event("w", "created")
        assert store.flush()
        started = threading.Event()
        holder = threading.Thread(target=_hold_the_database, args=(str(home.db), started))
        holder.start()
        started.wait()
        store.event("w", "storage-paused", free=1, floor=2)
        ctx = cast(Ctx, SimpleNamespace(daemon=SimpleNamespace(ctx=SimpleNamespace(store=store))))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        async def main() -> Any:
            ticker = tasks.spawn(tick(), "ticker")
            try:
                request = make_mocked_request("GET", "/events?machine=w")
                return await machines.events(ctx, request)
            finally:
                await tasks.cancel(ticker)

        t0 = time.monotonic()
        response = asyncio.run(main())
        waited = time.monotonic() - t0
        holder.join()
        kinds = [e["kind"] for e in json.loads(response.text)]
        assert kinds == ["created", "storage-paused"]
        # It waited for the writer (not the read's short wait) and the loop ran meanwhile.
        assert waited > READ_FLUSH_TIMEOUT
        assert ticks >= int(READ_FLUSH_TIMEOUT / 0.05) // 2
    finally:
        store.close()
