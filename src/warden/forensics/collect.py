"""A timeline from a home's files: pick the scope (a boot, or since a snapshot), read every
source of it, hand them to the pure builder (warden.forensics.timeline).

The disk is the one source whose reading depends on the guest: a running guest's COW file is
locked by its kernel and must be copied while the guest is paused (the daemon does that:
warden.forensics.operations). So the caller passes `read_disk`, which returns the diff of the
guest's disk against its base image, and `read_snapshot_disk` for `--since`.
"""

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.disk import snapshot
from warden.disk.diff import DiffReport
from warden.errors import NotFound, WardenError
from warden.forensics import sources
from warden.forensics import timeline as tl
from warden.paths import Layout
from warden.store import Store

DiskReader = Callable[[], DiffReport]
SnapshotReader = Callable[[Path], DiffReport]  # the diff of a snapshot's COW file


@dataclass
class Timeline:
    machine: str
    scope: str  # "boot 3" or "since snapshot before-attack"
    boots: tuple[int, ...]
    start_us: int
    end_us: int
    entries: list[tl.Entry] = field(default_factory=list)
    disk: dict[str, Any] = field(default_factory=dict)  # what the disk read cost, or why not

    def as_json(self) -> list[dict[str, Any]]:
        return [e.as_json() for e in self.entries]

    def meta(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.kind] = counts.get(e.kind, 0) + 1
        return {
            "machine": self.machine,
            "scope": self.scope,
            "boots": list(self.boots),
            "start": tl.iso(self.start_us),
            "end": tl.iso(self.end_us),
            "counts": counts,
            "disk": self.disk,
        }


def snapshot_time_us(snap: snapshot.Snapshot) -> int:
    t = datetime.datetime.fromisoformat(snap.created)
    return int(t.timestamp() * 1_000_000)


def collect(
    layout: Layout,
    machine: str,
    store: Store,
    *,
    boot: int | None = None,
    since: str | None = None,
    read_disk: DiskReader | None = None,
    read_snapshot: SnapshotReader | None = None,
    disk_boot: int | None = None,
    static_addresses: list[str] | None = None,
) -> Timeline:
    """`disk_boot`: the boot whose disk `read_disk` reads (default: the latest)."""
    now = sources.now_us()
    notes: list[tl.Entry] = []
    known = sources.boots(layout, machine)
    snap_disk: DiffReport | None = None
    if since is not None:
        cow = layout.machine(machine) / snapshot.COW_NAME
        snap = snapshot.get(cow, since)
        start, end = snapshot_time_us(snap), now
        logs = [
            log
            for b in known
            for log in sources.line_logs(layout, machine, b, notes)
            if (w := sources.window([log], now)) is None or w[1] >= start
        ]
        scope_boots = tuple(sorted({log.boot for log in logs}))
        scope = f"since snapshot {since}"
        try:
            if read_snapshot is not None:
                snap_disk = read_snapshot(snap.cow)
        except WardenError as e:
            notes.append(tl.note(now, f"the snapshot's disk could not be read: {e}"))
    else:
        if boot is None:
            if not known:
                raise NotFound(
                    f"{machine} has no session logs in {layout.home}: it never booted here, or "
                    "its logs are off ([logs] enabled = false)"
                )
            boot = known[-1]
        elif boot not in known:
            listed = ", ".join(map(str, known)) or "none"
            raise NotFound(f"{machine} has no logs of boot {boot} (boots with logs: {listed})")
        logs = sources.line_logs(layout, machine, boot, notes)
        w = sources.window(logs, now)
        start, end = w if w is not None else (0, now)
        scope_boots = (boot,)
        scope = f"boot {boot}"

    disk_meta: dict[str, Any] = {}
    files: list[tl.FileChange] = []
    if read_disk is not None:
        try:
            report = read_disk()
        except WardenError as e:
            notes.append(tl.note(end, f"the disk could not be read: {e}"))
            disk_meta = {"error": str(e)}
        else:
            files = sources.file_changes(report)
            if snap_disk is not None:
                files = sources.since_snapshot(files, sources.file_changes(snap_disk))
            disk_meta = {
                "seconds": round(report.seconds, 3),
                "sectors_written": report.sectors_written,
                "changes": len(files),
            }
    observed = min(now, end) if since is None else now
    if disk_boot is None:
        disk_boot = known[-1] if known else None
    if since is None and read_disk is not None and boot != disk_boot:
        notes.append(tl.note(end, "files: the disk as it is now, which later boots changed too"))

    try:
        events = sources.events(store, machine, start, end)
    except WardenError as e:
        events = []
        notes.append(tl.note(start, f"events could not be read: {e}"))
    guest = sources.guest_addresses(layout, machine, static_addresses or [])
    flows = sources.flows(sources.captures(layout, machine, set(scope_boots)), guest, notes, end)
    src = tl.Sources(
        machine=machine,
        window=tl.Window(start, end, observed),
        line_logs=logs,
        flows=flows,
        files=files,
        events=events,
        memory=sources.memory(layout, start, end),
        notes=notes,
    )
    return Timeline(machine, scope, scope_boots, start, end, tl.build(src), disk_meta)
