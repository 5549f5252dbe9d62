"""This host's copy of the cluster's keys: one read, then a watch; read again in full every
RESYNC seconds and whenever the watch breaks.

The copy may lag etcd by a moment; nothing that must not happen twice rests on it (claims are
create-only transactions, releases compare the value, a boot reads its owner record from
etcd itself: docs/formats/cluster.md). Before it, every host read the whole prefix every
0.5 s: 50 hosts with 5,000 machines would have pulled ~67 MB/s from etcd (benchmarks/
cluster.py).
"""

import asyncio
import contextlib
import logging
import time

from warden.cluster.etcd import Entry, Etcd, EtcdUnavailable
from warden.tasks import spawn

log = logging.getLogger("warden.cluster")

RESYNC = 10.0


class Cache:
    def __init__(self, etcd: Etcd, prefix: str, resync: float = RESYNC):
        self.etcd = etcd
        self.prefix = prefix
        self.resync = resync
        self.entries: dict[str, Entry] = {}
        self.reads = 0  # full reads so far (status, tests)
        self._resync_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def read(self) -> dict[str, Entry]:
        """The keys as this host knows them now (a copy)."""
        if self._task is None or self._task.done() or time.monotonic() >= self._resync_at:
            await self._full_read()
        return dict(self.entries)

    async def _full_read(self) -> None:
        await self.close()
        entries, revision = await self.etcd.prefix_at(self.prefix)
        self.reads += 1
        self.entries = entries
        self._resync_at = time.monotonic() + self.resync
        self._task = spawn(self._follow(revision + 1), "cluster-watch")

    async def _follow(self, start: int) -> None:
        try:
            async for put, entry in self.etcd.watch(self.prefix, start):
                if put:
                    self.entries[entry.key] = entry
                else:
                    self.entries.pop(entry.key, None)
        except EtcdUnavailable as e:
            log.warning("watch ended, reading again: %s", e)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
