"""The balancer's files: its JSONL log and its ledger state (docs/formats/memlog.md)."""

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warden import statefile
from warden.errors import WardenError
from warden.memory.ledger import Entry

LOG_VERSION = 1
STATE_VERSION = 1
FILE_CAP = 16 << 20
TOTAL_CAP = 256 << 20


def memory_dir(home: Path) -> Path:
    return home / "memory"


class LogWriter:
    """Appends lines to WARDEN_HOME/memory/log/RUN-SEQ.jsonl, splitting and pruning by size."""

    def __init__(
        self,
        directory: Path,
        header: dict[str, Any],
        file_cap: int = FILE_CAP,
        total_cap: int = TOTAL_CAP,
    ):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.header = header
        self.file_cap = file_cap
        self.total_cap = total_cap
        self.seq = 0
        self.fd: int | None = None
        self.size = 0
        self._open_next()

    def _open_next(self) -> None:
        self.close()
        self.seq += 1
        path = self.dir / f"{self.run}-{self.seq}.jsonl"
        while path.exists():  # two daemons in one second: keep both runs apart
            self.run += "b"
            path = self.dir / f"{self.run}-{self.seq}.jsonl"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.size = 0
        self._prune()
        self.write("run", v=LOG_VERSION, pid=os.getpid(), **self.header)

    def _prune(self) -> None:
        files = sorted(log_files(self.dir), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files[:-1]:
            if total <= self.total_cap:
                break
            total -= p.stat().st_size
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def write(self, kind: str, **fields: Any) -> None:
        if self.fd is None:
            return
        line = (
            json.dumps({"k": kind, "t": round(time.time(), 3), **fields}, separators=(",", ":"))
            + "\n"
        )
        data = line.encode()
        try:
            os.write(self.fd, data)  # one write per line: a crash cuts at most the last one
        except OSError:
            return  # a full disk must not stop the balancer; the log is best effort
        self.size += len(data)
        if self.size >= self.file_cap:
            self._open_next()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def log_files(directory: Path) -> list[Path]:
    """Every log file, oldest first (by run, then sequence number)."""
    if not directory.is_dir():
        return []

    def key(p: Path) -> tuple[str, int]:
        run, _, seq = p.stem.rpartition("-")
        return run, int(seq) if seq.isdigit() else 0

    return sorted(directory.glob("*.jsonl"), key=key)


def read_log(directory: Path, since: float = 0.0) -> Iterator[dict[str, Any]]:
    """Every record from `since` on, in file order; cut or foreign lines are skipped."""
    for path in log_files(directory):
        try:
            if since and path.stat().st_mtime < since:
                continue  # last written before `since`: none of its records is wanted
            fh = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue  # pruned meanwhile
        with fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("t", 0) >= since:
                    yield rec


# ---- state.json -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedGuest:
    pid: int | None
    pid_start: int | None
    max: int
    lo: int
    hi: int
    baseline: int | None
    pin: int | None
    hook: bool = False
    credit: int = 0
    selfplugged: int = 0


def save_state(path: Path, entries: dict[str, Entry], fastest: float = 0.0) -> None:
    guests = {
        name: {
            "pid": e.pid,
            "pid_start": e.pid_start,
            "max": e.max // 1024,
            "lo": e.lo // 1024,
            "hi": e.hi // 1024,
            "baseline": None if e.baseline is None else e.baseline // 1024,
            "pin": None if e.pin is None else e.pin // 1024,
            "hook": e.hook,
            # rounded up: the budget must not forget a byte the guest may plug back
            "credit": -(-e.credit // 1024),
            "selfplugged": e.selfplugged // 1024,
        }
        for name, e in entries.items()
        if not e.booting or e.pid is not None
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"v": STATE_VERSION, "guests": guests, "fastest": int(fastest) // 1024}
    statefile.write_json(path, doc, mode=0o640, indent=1)  # fsync'd, file and directory


def load_state(path: Path) -> dict[str, SavedGuest]:
    """The saved ledger; {} when there is none. A damaged file is an error naming it."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise WardenError(
            f"{path}: unreadable balancer state ({e}); remove it to start over"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guests", {}), dict):
        raise WardenError(f"{path}: not a balancer state file (expected a JSON object)")
    if doc.get("v") != STATE_VERSION:
        raise WardenError(f"{path}: balancer state version {doc.get('v')!r}, expected 1")
    out: dict[str, SavedGuest] = {}

    def kib(v: Any) -> int | None:
        return None if v is None else int(v) * 1024

    for name, g in doc.get("guests", {}).items():
        try:
            out[name] = SavedGuest(
                pid=g.get("pid"),
                pid_start=g.get("pid_start"),
                max=int(g["max"]) * 1024,
                lo=int(g["lo"]) * 1024,
                hi=int(g["hi"]) * 1024,
                baseline=kib(g.get("baseline")),
                pin=kib(g.get("pin")),
                hook=g.get("hook") is True,
                credit=int(g.get("credit", 0)) * 1024,
                selfplugged=int(g.get("selfplugged", 0)) * 1024,
            )
        except (KeyError, TypeError, ValueError):
            raise WardenError(f"{path}: guest {name!r} has a malformed record: {g!r}") from None
    return out


def load_fastest(path: Path) -> float:
    """The fleet's fastest growth seen (bytes/s) as saved; 0 when unknown or unreadable."""
    try:
        doc = json.loads(path.read_text())
        return float(max(0, int(doc.get("fastest", 0)))) * 1024
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
