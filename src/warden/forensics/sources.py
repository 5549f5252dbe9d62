"""The thin readers behind a timeline: which files belong to a boot, read into plain data.

Every reader works on the files of WARDEN_HOME, with or without a daemon (logs are evidence
and must stay readable when the daemon is gone): session logs through warden.console.logstore
(each record's HMAC checked as it is read), captures through warden.forensics.flows, events
through the store, the balancer's log through warden.memory.record. The disk is read by the
caller (a running guest's disk needs the daemon: warden.forensics.operations).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warden.console import logstore
from warden.console import sessionlog as sl
from warden.disk.diff import DiffReport
from warden.errors import NotFound, WardenError
from warden.forensics import flows as flowsmod
from warden.forensics import timeline as tl
from warden.memory import record as memrecord
from warden.net import capture
from warden.net import state as netstate
from warden.paths import Layout
from warden.store import Store

EVENT_PAGE = 5000


def logs_dir(layout: Layout, machine: str) -> Path:
    return layout.machine(machine) / "logs"


def boots(layout: Layout, machine: str) -> list[int]:
    """The boots of `machine` that have session logs (not archived), oldest first."""
    return sorted({r.boot for r in logstore.find(layout, machine, archived=False)})


def line_logs(layout: Layout, machine: str, boot: int, notes: list[tl.Entry]) -> list[tl.LineLog]:
    """Every line's log of one boot, all parts, records checked against the home's key. A
    file whose chain breaks is read up to the break, and a note says so."""
    refs = logstore.find(layout, machine, boot=boot, archived=False)
    if not refs:
        return []
    key = logstore.load_key(layout)
    out: list[tl.LineLog] = []
    for line in sorted({r.line for r in refs}):
        records: list[sl.Record] = []
        for ref in sorted((r for r in refs if r.line == line), key=lambda r: r.part):
            try:
                with logstore.reading(ref, key) as reader:
                    records.extend(reader)
                    problem = reader.state.problem
            except (WardenError, OSError, EOFError) as e:
                problem = str(e)
            if problem:
                when = records[-1].time_us if records else 0
                notes.append(tl.note(when, f"{ref.path.name}: {problem}", file=str(ref.path)))
        out.append(tl.LineLog(machine, line, boot, records))
    return out


def window(logs: list[tl.LineLog], now_us: int) -> tuple[int, int] | None:
    """(earliest, latest) record time of one boot's logs (a tty log's records carry the
    kernel's times, which may precede the file's first record); `now_us` as the end while a
    log is live (no END record yet)."""
    times = [r.time_us for log in logs for r in log.records]
    if not times:
        return None
    ended = all(log.records and log.records[-1].type == sl.END for log in logs)
    return min(times), max(times) if ended else max(now_us, max(times))


def captures(layout: Layout, machine: str, boot_set: set[int]) -> list[Path]:
    d = logs_dir(layout, machine) / "pcap"
    if not d.is_dir():
        return []
    out = []
    for p in capture.files(d):
        m = capture.FILE_NAME.match(p.name)
        if m and int(m[1]) in boot_set:
            out.append(p)
    return out


def guest_addresses(layout: Layout, machine: str, static: list[str]) -> frozenset[str]:
    """The guest's own addresses (for a flow's direction): its fleet addresses and warden's
    choices for its DHCP NICs (net/state.json)."""
    found = {a for a in static if a}
    try:
        st = netstate.load(layout.home / "net" / "state.json")
        found.update(a for a in st.addresses.get(machine, []) if a)
    except (OSError, ValueError, KeyError, TypeError, WardenError):
        pass
    return frozenset(found)


def flows(
    paths: list[Path], guest: frozenset[str], notes: list[tl.Entry], when_us: int
) -> list[dict[str, Any]]:
    found, totals = flowsmod.read(paths)
    for problem in totals.cut_files:
        notes.append(tl.note(when_us, problem))
    if totals.unparsed or totals.flows_over_cap:
        notes.append(
            tl.note(
                when_us,
                f"captures: {totals.unparsed} packets did not parse, {totals.flows_over_cap} "
                f"were past the {flowsmod.FLOW_MAX} flows kept",
            )
        )
    return [f.as_json(guest) for f in found]


def events(store: Store, machine: str, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """warden.db events of `machine` with a time inside the window."""
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = store.events(machine, since=since, limit=EVENT_PAGE)
        for row in page:
            if start_us <= float(row["ts"]) * 1e6 <= end_us:
                out.append(row)
        if len(page) < EVENT_PAGE:
            return out
        since = int(page[-1]["id"])


def open_store(layout: Layout) -> Store:
    if not layout.db.exists():
        raise NotFound(f"{layout.db}: no warden database in this home; is WARDEN_HOME right?")
    return Store(layout.db)


def memory(layout: Layout, start_us: int, end_us: int) -> list[dict[str, Any]]:
    d = memrecord.memory_dir(layout.home) / "log"
    out = []
    for row in memrecord.read_log(d, since=start_us / 1e6):
        if float(row.get("t", 0)) * 1e6 <= end_us and row.get("k") in ("act", "ev"):
            out.append(row)
    return out


def file_changes(report: DiffReport | dict[str, Any]) -> list[tl.FileChange]:
    doc = report.as_json() if isinstance(report, DiffReport) else report
    out = []
    for ch in doc.get("changes", []):
        ns = ch.get("ctime_ns")
        out.append(tl.FileChange(ch, None if ns is None else int(ns) // 1000))
    return out


def since_snapshot(now: list[tl.FileChange], then: list[tl.FileChange]) -> list[tl.FileChange]:
    """What changed after a snapshot: both disks are diffed against the base image, and a
    change the snapshot already had, identical, is left out. A file the snapshot had created
    or changed that is now as in the base image (or gone) shows as changed back."""
    before = {c.change["path"]: c.change for c in then}
    out = []
    for c in now:
        old = before.pop(c.change["path"], None)
        if old is not None and _same(old, c.change):
            continue
        if old is not None and c.change.get("kind") != "deleted":
            # there at the snapshot already: changed since, whatever it was against the base
            c = tl.FileChange(c.change | {"kind": "modified"}, c.ctime_us)
        out.append(c)
    for path, old in sorted(before.items()):
        if old.get("kind") == "created":
            gone = {"kind": "deleted", "path": path, "type": old.get("type"), "size": None}
            out.append(tl.FileChange(gone | {"old_size": old.get("size"), "changes": []}, None))
        else:
            back = {"kind": "modified", "path": path, "type": old.get("type")}
            out.append(tl.FileChange(back | {"changes": ["restored to the base image"]}, None))
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("kind", "type", "size", "sha256", "target", "changes", "ctime_ns")
    return all(a.get(k) == b.get(k) for k in keys)


@dataclass(frozen=True)
class Scope:
    """What a timeline covers: one boot, or everything since a snapshot."""

    boots: tuple[int, ...]
    start_us: int
    end_us: int
    label: str


def now_us() -> int:
    return time.time_ns() // 1000
