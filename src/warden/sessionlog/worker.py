"""The session-log writer's threads: a worker that drains a queue in batches and ends when idle,
and the compressor that gzips closed log files (docs/formats/session-log.md, "Compression").

Both end by themselves: when the daemon has asked them to stop (or its main thread is gone) and
they have nothing left; `put` starts them again.
"""

import collections
import contextlib
import gzip
import logging
import os
import threading
from pathlib import Path
from typing import Any

from warden.sessionlog.quota import GuestUsage
from warden.statefile import fsync_dir

log = logging.getLogger("warden.sessionlog")

IDLE_CHECK = 0.5


class Worker:
    """A thread that runs `handle` on queued items and ends when idle and told to (or orphaned)."""

    def __init__(self, name: str):
        self.name = name
        self.items: collections.deque[Any] = collections.deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.lock = threading.Lock()

    def busy(self) -> bool:
        return False

    def handle(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def put(self, item: Any) -> None:
        with self.lock:  # against a thread deciding to end right now (see _run)
            self.items.append(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=False)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(IDLE_CHECK)
            self.wake.clear()
            batch: list[Any] = []
            barriers: list[threading.Event] = []
            while self.items:
                item = self.items.popleft()
                (barriers if isinstance(item, threading.Event) else batch).append(item)
            if batch:
                try:
                    self.handle(batch)
                except Exception:  # never let one bad item kill the thread
                    log.exception("%s: batch failed", self.name)
            for b in barriers:
                b.set()
            if batch or barriers:
                continue
            orphaned = not threading.main_thread().is_alive()
            if (self.stopping or orphaned) and (orphaned or not self.busy()):
                with self.lock:
                    if self.items:
                        continue  # put() saw a live thread: this one must take it
                    self.thread = None
                    return

    def sync(self, timeout: float) -> bool:
        """Wait until everything queued before this call is handled."""
        done = threading.Event()
        self.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def join(self, timeout: float | None = None) -> None:
        t = self.thread
        if t is not None:
            t.join(timeout)


class Compressor(Worker):
    def __init__(self) -> None:
        super().__init__("wlog-compress")

    def handle(self, batch: list[Any]) -> None:
        for path, usage in batch:
            compress(path, usage)


def compress(path: Path, usage: GuestUsage | None) -> None:
    """FILE -> FILE.gz (docs: tmp, fsync, rename, fsync dir, unlink)."""
    gz = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        raw = path.stat().st_size
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            with gzip.GzipFile(filename="", mode="wb", fileobj=dst, compresslevel=6, mtime=0) as z:
                while chunk := src.read(1 << 20):
                    z.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(tmp, gz)
        fsync_dir(path.parent)
        path.unlink()
        if usage is not None:
            usage.add(gz.stat().st_size - raw)
    except OSError as e:
        log.warning("%s: compression failed (%s); left uncompressed", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
