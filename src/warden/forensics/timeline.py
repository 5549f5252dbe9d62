"""One chronological record of a guest's life: parsed sources in, sorted entries out (pure).

Every entry has a host time (`time_us`, µs since the epoch) and a `kind`:
- `session`: line logs' attach/detach/takeover; the tty log's pty pairs (open, login,
  close). Fields: action, session, line, user, source, uid, ...
- `input`: lines typed, by a client on a line or in an ssh session (tty log). Fields:
  session, line, boot, text, raw, complete, offset, replay.
- `exec`: the tty log's EXEC records. Fields: session, pid, ppid, uid, euid, filename, argv,
  command, offset, replay.
- `flow`: the captures (warden.forensics.flows). Fields: proto, src, sport, dst, dport,
  bytes and packets each way, direction, dns.
- `file`: the COW diff (warden.disk.diff). Fields: action, path, type, size, old_size,
  sha256, changes, time_source.
- `event`: warden.db events, the memory balancer's log, session- and tty-log notes, the
  builder's own notes. Fields: source, event, and the event's own.

`offset` is where `warden replay MACHINE:LINE --boot B --at OFFSET` starts playing the entry:
seconds (µs precision) from the first record of that boot's log of that line
(`replay_offset`); `warden logs search` reports the same number.

Times are the host's for everything but files: the disk keeps no host time, so a file entry
is placed at its inode's change time (the guest's clock, which guest root can set) when that
falls inside the window, else at the time the disk was read (`time_source` says which).

Everything a guest chose (typed text, argv, paths, DNS names, user names of the guest) is
kept as it came (decoded as UTF-8 with escapes for other bytes) and must be escaped by
whoever prints it (warden.forensics.render).
"""

import datetime
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from warden.console import sessionlog as sl
from warden.console.export import strip_controls
from warden.console.replay import replay_offset
from warden.honeypot import ttylog
from warden.honeypot.ttyview import TtyView, argv_text

KINDS = ("session", "input", "exec", "flow", "file", "event")
LINE_MAX = 4096  # bytes of one typed line kept; longer ones are cut and marked
KIND_CAP = 200_000  # entries of one kind; beyond, one note says how many were left out
LINE_EVENTS = ("attach", "detach", "takeover")
NOTED_LOG_EVENTS = ("reattach", "recovered", "dropped", "write-failed", "boot-end")


@dataclass(frozen=True)
class Entry:
    time_us: int
    kind: str
    fields: dict[str, Any]
    order: tuple[int, int] = (0, 0)  # (source, position in it): a stable tie-break

    def as_json(self) -> dict[str, Any]:
        return {"time": iso(self.time_us), "time_us": self.time_us, "kind": self.kind} | (
            self.fields
        )


def iso(time_us: int) -> str:
    t = datetime.datetime.fromtimestamp(time_us // 1_000_000, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{time_us % 1_000_000:06d}Z"


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


# ---- sources ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineLog:
    """Every record of one boot's log of one line (all parts, in order)."""

    machine: str
    line: str
    boot: int
    records: Sequence[sl.Record]


@dataclass(frozen=True)
class FileChange:
    """A `warden.disk.diff.Change` as JSON, with the inode's change time when known."""

    change: dict[str, Any]
    ctime_us: int | None


@dataclass(frozen=True)
class Window:
    start_us: int
    end_us: int
    observed_us: int  # when the disk (or the rest) was read: the time of undated entries

    def holds(self, t: int) -> bool:
        return self.start_us <= t <= self.end_us


def _replay_ref(machine: str, line: str, boot: int, offset: str, tty: int | None) -> str:
    cmd = f"warden replay {machine}:{line} --boot {boot}"
    if tty is not None:
        cmd += f" --tty {tty}"
    return f"{cmd} --at {offset}"


class _Typed:
    """Keystrokes of one session gathered into lines (a line ends at CR or LF)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.start: sl.Record | None = None
        self.fields: dict[str, Any] = {}

    def feed(
        self, rec: sl.Record, data: bytes, fields: dict[str, Any]
    ) -> Iterator[tuple[sl.Record, bytes, dict[str, Any], bool]]:
        """(first record, line bytes, fields, complete) for every line `data` ends."""
        for i in range(len(data)):
            b = data[i : i + 1]
            if self.start is None:
                self.start, self.fields = rec, fields
            if b in (b"\r", b"\n"):
                if self.buf:
                    yield self.start, bytes(self.buf), self.fields, True
                self.buf.clear()
                self.start = None
                continue
            self.buf += b
            if len(self.buf) >= LINE_MAX:
                yield self.start, bytes(self.buf), self.fields | {"cut": True}, False
                self.buf.clear()
                self.start = None

    def rest(self) -> Iterator[tuple[sl.Record, bytes, dict[str, Any], bool]]:
        if self.buf and self.start is not None:
            yield self.start, bytes(self.buf), self.fields, False


def _input_entry(
    log: LineLog, first_us: int, start: sl.Record, raw: bytes, extra: dict[str, Any], done: bool
) -> Entry:
    offset = replay_offset(start.time_us, first_us)
    tty = extra.get("tty")
    fields = {
        "session": extra.get("session", log.line),
        "line": log.line,
        "boot": log.boot,
        "text": strip_controls(_text(raw)),
        "raw": _text(raw),
        "complete": done,
        "offset": offset,
        "replay": _replay_ref(log.machine, log.line, log.boot, offset, tty),
    } | {k: v for k, v in extra.items() if k not in ("session",)}
    return Entry(start.time_us, "input", fields)


def from_line_log(log: LineLog) -> list[Entry]:
    """A console or serial line's log: who attached and what clients typed."""
    out: list[Entry] = []
    first_us = log.records[0].time_us if log.records else 0
    typed: dict[str, _Typed] = {}
    for r in log.records:
        if r.type == sl.INPUT:
            who = r.user
            t = typed.setdefault(who, _Typed())
            for start, raw, extra, done in t.feed(r, r.data, {"user": who}):
                out.append(_input_entry(log, first_us, start, raw, extra, done))
        elif r.type == sl.EVENT and r.kind in LINE_EVENTS:
            ev = r.event
            fields = {"action": r.kind, "session": log.line, "line": log.line, "boot": log.boot}
            fields |= {k: v for k, v in ev.items() if k != "kind"}
            out.append(Entry(r.time_us, "session", fields))
        elif r.type == sl.EVENT and r.kind in NOTED_LOG_EVENTS:
            ev = {k: v for k, v in r.event.items() if k != "kind"}
            fields = {"source": "session-log", "event": r.kind, "line": log.line} | ev
            out.append(Entry(r.time_us, "event", fields))
    for t in typed.values():
        for start, raw, extra, done in t.rest():
            out.append(_input_entry(log, first_us, start, raw, extra, done))
    return out


def from_tty_log(log: LineLog) -> list[Entry]:
    """The honeypot kernel's tty log: pty sessions (ssh logins), typed lines, execs.

    A pty pair is one session, named by its slave (`pts0`). It opens with the pair, is a
    *login* once a login shell (argv[0] starting with '-', as sshd and login start it) runs
    on it, and closes with its master. Typed lines are taken from pty sessions only: what
    was typed on the console and serial lines is in their own line logs, with who typed it.
    """
    out: list[Entry] = []
    first_us = log.records[0].time_us if log.records else 0
    view = TtyView()
    typed: dict[int, _Typed] = {}
    opened: dict[int, int] = {}  # session -> time_us of its open
    logged_in: dict[int, int] = {}  # session -> uid of its login shell
    for r in log.records:
        if r.type != sl.TTYLOG:
            if r.type == sl.EVENT and r.kind.startswith("ttylog-"):
                ev = {k: v for k, v in r.event.items() if k != "kind"}
                out.append(Entry(r.time_us, "event", {"source": "tty-log", "event": r.kind} | ev))
            continue
        try:
            rec = view.decode(r.payload)
        except ttylog.TtyLogError as e:
            damaged = {"source": "tty-log", "event": "damaged", "error": str(e), "seq": r.seq}
            out.append(Entry(r.time_us, "event", damaged))
            continue
        if isinstance(rec, ttylog.Open) and rec.is_pty_master:
            opened[rec.tty] = r.time_us
        elif isinstance(rec, ttylog.Open) and rec.is_pty_slave and rec.link in opened:
            out.append(
                Entry(
                    r.time_us,
                    "session",
                    {
                        "action": "open",
                        "session": rec.name,
                        "line": "tty",
                        "boot": log.boot,
                        "tty": rec.link,
                        "pid": rec.pid,
                        "uid": rec.uid,
                    },
                )
            )
        elif isinstance(rec, ttylog.Close):
            session = view.session(rec.tty)
            if session == rec.tty and session in opened:
                began = opened.pop(session)
                fields = {
                    "action": "close",
                    "session": view.label(session),
                    "line": "tty",
                    "boot": log.boot,
                    "tty": session,
                    "seconds": round((r.time_us - began) / 1e6, 3),
                }
                if session in logged_in:
                    fields["uid"] = logged_in.pop(session)
                    fields["login"] = True
                out.append(Entry(r.time_us, "session", fields))
        elif isinstance(rec, ttylog.Exec):
            on: int | None = view.session(rec.tty) if rec.tty else None
            label = view.label(on) if on is not None else None
            offset = replay_offset(r.time_us, first_us)
            argv = [_text(a) for a in rec.argv]
            fields = {
                "session": label,
                "line": "tty",
                "boot": log.boot,
                "pid": rec.pid,
                "ppid": rec.ppid,
                "uid": rec.uid,
                "euid": rec.euid,
                "filename": _text(rec.filename),
                "argv": argv,
                "command": argv_text(rec),
                "truncated": rec.truncated,
                "offset": offset,
                "replay": _replay_ref(log.machine, "tty", log.boot, offset, on),
            }
            if on is not None:
                fields["tty"] = on
            out.append(Entry(r.time_us, "exec", fields))
            if (
                on is not None
                and on in opened
                and on not in logged_in
                and rec.argv
                and rec.argv[0].startswith(b"-")
            ):
                logged_in[on] = rec.uid
                out.append(
                    Entry(
                        r.time_us,
                        "session",
                        {
                            "action": "login",
                            "session": label,
                            "line": "tty",
                            "boot": log.boot,
                            "tty": on,
                            "uid": rec.uid,
                            "shell": argv[0],
                        },
                    )
                )
        elif isinstance(rec, ttylog.Data):
            data = view.typed(rec)
            session = view.session(rec.tty)
            if data is None or session not in opened:
                continue  # not keystrokes, or not a pty session (see the docstring)
            t = typed.setdefault(session, _Typed())
            extra = {"session": view.label(session), "tty": session}
            for start, raw, ex, done in t.feed(r, data, extra):
                out.append(_input_entry(log, first_us, start, raw, ex, done))
        elif isinstance(rec, ttylog.Drop):
            out.append(
                Entry(
                    r.time_us,
                    "event",
                    {
                        "source": "tty-log",
                        "event": "kernel-dropped",
                        "lost_records": rec.lost_records,
                        "lost_bytes": rec.lost_bytes,
                    },
                )
            )
    for t in typed.values():
        for start, raw, ex, done in t.rest():
            out.append(_input_entry(log, first_us, start, raw, ex, done))
    return out


def from_flows(flows: Iterable[dict[str, Any]]) -> list[Entry]:
    """Flows as warden.forensics.flows.Flow.as_json() gives them (`first_us` is their start)."""
    return [
        Entry(int(f["first_us"]), "flow", {k: v for k, v in f.items() if k != "first_us"})
        for f in flows
    ]


def from_files(changes: Iterable[FileChange], window: Window) -> list[Entry]:
    out = []
    for c in changes:
        ch = c.change
        if c.ctime_us is not None and window.holds(c.ctime_us):
            t, source = c.ctime_us, "guest-ctime"
        else:
            t, source = window.observed_us, "observed"
        fields = {
            "action": ch.get("kind"),
            "path": ch.get("path"),
            "type": ch.get("type"),
            "size": ch.get("size"),
            "old_size": ch.get("old_size"),
            "sha256": ch.get("sha256"),
            "changes": ch.get("changes", []),
            "target": ch.get("target"),
            "time_source": source,
        }
        if c.ctime_us is not None:
            fields["guest_ctime"] = iso(c.ctime_us)
        out.append(Entry(t, "file", fields))
    return out


def from_events(rows: Iterable[dict[str, Any]]) -> list[Entry]:
    """warden.db events ({"ts": seconds, "kind": ..., fields})."""
    out = []
    for row in rows:
        fields = {"source": "warden", "event": row.get("kind")}
        fields |= {k: v for k, v in row.items() if k not in ("ts", "kind", "id", "machine")}
        out.append(Entry(round(float(row["ts"]) * 1e6), "event", fields))
    return out


def from_memory_log(rows: Iterable[dict[str, Any]], machine: str) -> list[Entry]:
    """The balancer's `act` and `ev` lines about `machine` (docs/formats/memlog.md)."""
    out = []
    for row in rows:
        if row.get("g") != machine or row.get("k") not in ("act", "ev"):
            continue
        name = f"memory-{row.get('op')}" if row["k"] == "act" else f"memory-{row.get('what')}"
        fields = {"source": "memory", "event": name}
        fields |= {k: v for k, v in row.items() if k not in ("t", "k", "g")}
        out.append(Entry(round(float(row["t"]) * 1e6), "event", fields))
    return out


def note(time_us: int, text: str, **fields: Any) -> Entry:
    """The builder's own remark (a source missing, entries left out)."""
    return Entry(time_us, "event", {"source": "timeline", "event": "note", "text": text} | fields)


# ---- the merge ----------------------------------------------------------------------------
@dataclass
class Sources:
    machine: str
    window: Window
    line_logs: list[LineLog] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)
    files: list[FileChange] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Entry] = field(default_factory=list)


def build(src: Sources) -> list[Entry]:
    """Every source's entries inside the window, by time (ties in source order)."""
    groups: list[list[Entry]] = []
    for log in src.line_logs:
        groups.append(from_tty_log(log) if log.line == "tty" else from_line_log(log))
    groups.append(from_flows(src.flows))
    groups.append(from_files(src.files, src.window))
    groups.append(from_events(src.events))
    groups.append(from_memory_log(src.memory, src.machine))
    groups.append(list(src.notes))
    w = src.window
    kept: list[Entry] = []
    for gi, group in enumerate(groups):
        for i, e in enumerate(group):
            if e.kind == "file" or e.fields.get("source") == "timeline" or w.holds(e.time_us):
                kept.append(Entry(e.time_us, e.kind, e.fields, (gi, i)))
    kept.sort(key=lambda e: (e.time_us, e.order))
    return _capped(kept)


def _capped(entries: list[Entry]) -> list[Entry]:
    counts: dict[str, int] = {}
    out: list[Entry] = []
    left: dict[str, int] = {}
    for e in entries:
        n = counts.get(e.kind, 0)
        if n >= KIND_CAP:
            left[e.kind] = left.get(e.kind, 0) + 1
            continue
        counts[e.kind] = n + 1
        out.append(e)
    for kind, n in sorted(left.items()):
        last = out[-1].time_us if out else 0
        out.append(note(last, f"{n} more {kind} entries left out (at most {KIND_CAP} a kind)"))
    return out
