"""warden's state on disk: one SQLite database per WARDEN_HOME, written by the daemon only.

What is kept, and why it must survive the daemon:
- the fleet file last applied (its text): the daemon re-reads it at start;
- per machine, the runtime facts a new daemon needs to find a running guest again: its kernel
  pid and that process's start time (so a recycled pid is never mistaken for the guest), the
  boot counter, the state and the last exit;
- an event log (state changes, exits, panics, actions) for `warden events` and the tests.

Events are written by a thread of their own (`warden-events`), in batches, from a bounded
queue: `event()` only queues, so no caller on the daemon's event loop waits for SQLite, and a
guest that makes the daemon log (docs/security.md, "Guest channels") costs the loop a queue
put. A full queue drops the event and counts it; the count is stored as one `events-dropped`
event. Readers (`events()`) first wait for what was queued before them. Machine rows and the
fleet are written by the caller, at the pace of admin actions and state changes.

Schema changes bump SCHEMA_VERSION and add a migration step in _migrate.
"""

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
EVENT_QUEUE = 4096  # events waiting for the writer; ~1 MB at most
EVENT_BATCH = 512  # events per transaction
FLUSH_TIMEOUT = 10.0
READ_FLUSH_TIMEOUT = 1.0

log = logging.getLogger("warden.store")
EventRow = tuple[float, str | None, str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS machines (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,              -- see warden.daemon.machine.State
    desired TEXT NOT NULL,            -- 'running' or 'stopped': what the admin last asked for
    pid INTEGER,                      -- host pid of the kernel while it runs
    pid_start INTEGER,                -- its start time (clock ticks since boot, /proc/PID/stat)
    boot INTEGER NOT NULL DEFAULT 0,  -- boots so far; names the per-boot log files
    started_at REAL,
    base TEXT,                        -- the base image file the COW was made over
    uid INTEGER,                      -- the jail's uid/gid while the guest exists
    last_exit TEXT,                   -- JSON: how the last boot ended
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    machine TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_machine ON events (machine, id);
"""


@dataclass
class MachineRow:
    name: str
    state: str
    desired: str
    pid: int | None
    pid_start: int | None
    boot: int
    started_at: float | None
    base: str | None
    uid: int | None
    last_exit: dict[str, Any] | None


class Store:
    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._migrate()
        self._queue: queue.Queue[EventRow | None] = queue.Queue(EVENT_QUEUE)
        self._done = threading.Condition()
        self._queued = 0  # events put in the queue (under _done)
        self._written = 0  # of those, taken by the writer (stored or failed)
        self._dropped = 0  # events refused by a full queue, not yet reported
        self._writer: threading.Thread | None = threading.Thread(
            target=self._write_events, name="warden-events", daemon=True
        )
        self._writer.start()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                self._queue.put(None, timeout=FLUSH_TIMEOUT)
            except queue.Full:
                log.error("%s: the event writer is stuck; closing without it", self.path)
            writer.join(FLUSH_TIMEOUT)
        self.db.close()

    def _migrate(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema {row[0]}, newer than this warden ({SCHEMA_VERSION})"
            )

    # -- fleet
    def save_fleet(self, source: str, text: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO fleet (id, source, text, applied_at) VALUES (1, ?, ?, ?)",
            (source, text, time.time()),
        )

    def load_fleet(self) -> tuple[str, str] | None:
        row = self.db.execute("SELECT source, text FROM fleet WHERE id = 1").fetchone()
        return (row[0], row[1]) if row else None

    # -- machines
    def machine(self, name: str) -> MachineRow | None:
        row = self.db.execute(
            "SELECT name, state, desired, pid, pid_start, boot, started_at, base, uid, last_exit "
            "FROM machines WHERE name = ?",
            (name,),
        ).fetchone()
        return self._row(row) if row else None

    def machines(self) -> list[MachineRow]:
        rows = self.db.execute(
            "SELECT name, state, desired, pid, pid_start, boot, started_at, base, uid, last_exit "
            "FROM machines ORDER BY name"
        ).fetchall()
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(r: tuple[Any, ...]) -> MachineRow:
        return MachineRow(
            name=r[0],
            state=r[1],
            desired=r[2],
            pid=r[3],
            pid_start=r[4],
            boot=r[5],
            started_at=r[6],
            base=r[7],
            uid=r[8],
            last_exit=json.loads(r[9]) if r[9] else None,
        )

    def put_machine(self, m: MachineRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO machines (name, state, desired, pid, pid_start, boot, "
            "started_at, base, uid, last_exit, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                m.name,
                m.state,
                m.desired,
                m.pid,
                m.pid_start,
                m.boot,
                m.started_at,
                m.base,
                m.uid,
                json.dumps(m.last_exit) if m.last_exit is not None else None,
                time.time(),
            ),
        )

    def delete_machine(self, name: str) -> None:
        self.db.execute("DELETE FROM machines WHERE name = ?", (name,))

    # -- events
    def event(self, machine: str | None, kind: str, **detail: Any) -> None:
        """Queue an event for the writer thread; never waits."""
        if self._writer is None:
            log.warning("event %s of %s after the store was closed: not stored", kind, machine)
            return
        row = (time.time(), machine, kind, json.dumps(detail))
        with self._done:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._dropped += 1
                return
            self._queued += 1

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until every event queued so far is written; False on timeout."""
        with self._done:
            target = self._queued
            return self._done.wait_for(lambda: self._written >= target, timeout)

    def _write_events(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < EVENT_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [r for r in batch if r is not None]
                with self._done:
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    detail = {"dropped": dropped, "reason": "the event queue was full"}
                    rows.append((time.time(), None, "events-dropped", json.dumps(detail)))
                try:
                    db.execute("BEGIN")
                    db.executemany(
                        "INSERT INTO events (ts, machine, kind, detail) VALUES (?, ?, ?, ?)", rows
                    )
                    db.execute("COMMIT")
                except sqlite3.Error as e:
                    log.error("%s: %d events not stored: %s", self.path, len(rows), e)
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                with self._done:
                    self._written += len(batch) - batch.count(None)
                    self._done.notify_all()
                if None in batch:
                    return
        finally:
            db.close()

    def events(
        self, machine: str | None = None, since: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        # Briefly: this runs on the daemon's loop (an admin's `warden events`); a writer that
        # is behind for longer only makes the newest events show at the next read.
        self.flush(READ_FLUSH_TIMEOUT)
        if machine is None:
            rows = self.db.execute(
                "SELECT id, ts, machine, kind, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (since, limit),
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT id, ts, machine, kind, detail FROM events WHERE machine = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (machine, since, limit),
            ).fetchall()
        return [
            {"id": r[0], "ts": r[1], "machine": r[2], "kind": r[3], **json.loads(r[4])}
            for r in rows
        ]
