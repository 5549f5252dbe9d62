"""warden's state on disk: one SQLite database per WARDEN_HOME, written by the daemon only.

What is kept, and why it must survive the daemon:
- the fleet file last applied (its text): the daemon re-reads it at start;
- per machine, the runtime facts a new daemon needs to find a running guest again: its kernel
  pid and that process's start time (so a recycled pid is never mistaken for the guest), the
  boot counter, the state and the last exit;
- an event log (state changes, exits, panics, actions) for `warden events` and the tests.

Schema changes bump SCHEMA_VERSION and add a migration step in _migrate.
"""

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

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

    def close(self) -> None:
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
        self.db.execute(
            "INSERT INTO events (ts, machine, kind, detail) VALUES (?, ?, ?, ?)",
            (time.time(), machine, kind, json.dumps(detail)),
        )

    def events(
        self, machine: str | None = None, since: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
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
