"""Snapshots of a running guest's COW file: take (stop, copy, go), list, restore, delete.

Layout (docs/formats/ubd-cow.md, "Snapshots"): DIR/snapshots/NAME/{disk.cow,meta.json} next to
the COW file DIR/disk.cow. A snapshot's disk.cow is itself a COW file over the same backing
file, so everything else in warden.disk works on it (inspect, merge, diff, or booting it).

Taking one: mconsole `stop` freezes the guest's kernel, the COW file is copied sparsely (header
and bitmap first, then the data area: see the format doc for why that order), and mconsole `go`
resumes it, always, even when the copy failed. The pause lasts as long as the copy of the
written data. The daemon's by-name form (`warden disk snapshot MACHINE NAME`) calls `take` with
the machine's COW path and mconsole client.
"""

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from warden.disk import backing, hostfile
from warden.disk.errors import DiskError, DiskFull, SnapshotError
from warden.errors import MconsoleError
from warden.progress import NullProgress, Progress
from warden.uml import cow

META_FORMAT = 1
COW_NAME = "disk.cow"
META_NAME = "meta.json"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class CommandClient(Protocol):
    """What snapshot needs of an mconsole client (warden.uml.mconsole.Client has it)."""

    def request(self, command: str, timeout: float | None = None) -> str: ...


@dataclass(frozen=True)
class Snapshot:
    name: str
    directory: Path
    cow_name: str  # the file name of the COW file it was taken of
    created: str  # ISO 8601, UTC
    backing: str
    backing_mtime: int
    backing_size: int
    sectors_written: int
    paused_seconds: float

    @property
    def cow(self) -> Path:
        return self.directory / COW_NAME

    def as_json(self) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "name": self.name,
            "cow": self.cow_name,
            "created": self.created,
            "backing": self.backing,
            "backing_mtime": self.backing_mtime,
            "backing_size": self.backing_size,
            "sectors_written": self.sectors_written,
            "paused_seconds": round(self.paused_seconds, 6),
        }


def default_store(cow_path: Path) -> Path:
    return cow_path.parent / "snapshots"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SnapshotError(
            f"snapshot name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
            "(not starting with a dot)"
        )
    return name


def _copy_cow(src: int, dst: int, c: cow.CowFile) -> None:
    """Header and bitmap first, then the data area's extents (sparse)."""
    h = c.header
    meta_end = h.data_offset
    for start, end in hostfile.data_extents(src, 0, meta_end):
        hostfile.copy_range(src, start, dst, start, end - start)
    length = os.fstat(src).st_size
    for start, end in hostfile.data_extents(src, meta_end, length):
        hostfile.copy_range(src, start, dst, start, end - start)
    os.ftruncate(dst, length)


def take(
    cow_path: Path,
    client: CommandClient,
    name: str,
    *,
    store: Path | None = None,
    progress: Progress | None = None,
    recorded: backing.Recorded | None = None,
) -> Snapshot:
    """Snapshot the running guest whose COW file is `cow_path` and whose mconsole is `client`.

    The header is checked against the backing file first (the base warden recorded, for a
    machine's disk), and must be the same once the guest is stopped."""
    p = progress or NullProgress()
    check_name(name)
    c, _ = backing.check(cow_path, None, recorded)
    root = store or default_store(cow_path)
    directory = root / name
    if directory.exists():
        raise SnapshotError(f"snapshot {name!r} already exists in {root}")
    root.mkdir(parents=True, exist_ok=True)
    # Made whole in a hidden directory and renamed: a writer killed half-way (the daemon, by
    # kill -9) leaves no half snapshot under the name, and its leftover is swept next time.
    staging = hostfile.temp_dir(root, name)
    fd = -1
    try:
        fd, temp = hostfile.temp_file(staging, COW_NAME)
        src = os.open(cow_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            p.step(f"stopping the guest and copying {cow_path.name}")
            t0 = time.monotonic()
            stopped = False
            try:
                client.request("stop")
                stopped = True
                before, c = c, cow.open_cow(cow_path, c.header.size)  # the bitmap at the stop
                if c.header != before.header:
                    raise SnapshotError(f"{cow_path}: its header changed while it was read")
                _copy_cow(src, fd, c)
            finally:
                _resume(client, stopped)
                paused = time.monotonic() - t0
        finally:
            os.close(src)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, staging / COW_NAME)
        snap = Snapshot(
            name=name,
            directory=directory,
            cow_name=cow_path.name,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            backing=os.fsdecode(c.header.backing),
            backing_mtime=c.header.mtime,
            backing_size=c.header.size,
            sectors_written=c.written(),
            paused_seconds=paused,
        )
        _write_meta(staging, snap.as_json())
        hostfile.fsync_dir(staging)
        try:
            os.rename(staging, directory)  # refused if a snapshot of that name appeared
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise SnapshotError(f"snapshot {name!r} already exists in {root}") from None
            raise
        hostfile.fsync_dir(root)
        return snap
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in hostfile.FULL_ERRNOS:
            raise DiskFull(
                f"{root}: no space left for snapshot {name!r}; nothing was kept"
            ) from None
        if isinstance(e, OSError):
            raise SnapshotError(f"snapshot {name!r} of {cow_path} failed: {e}") from None
        raise


def sweep(cow_path: Path, store: Path | None = None) -> list[Path]:
    """Remove the staging directories of snapshots whose writer was killed (the daemon starts
    with this for every machine: no half snapshot outlives the daemon that made it)."""
    return hostfile.sweep_temps(store or default_store(cow_path))


def _resume(client: CommandClient, stopped: bool) -> None:
    """`go`, always; on a guest that never stopped it answers "Not stopped", which is fine."""
    try:
        client.request("go")
    except MconsoleError:
        if stopped:
            raise


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    fd, temp = hostfile.temp_file(directory, META_NAME)
    try:
        os.write(fd, (json.dumps(meta, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / META_NAME)


def _read(directory: Path) -> Snapshot:
    meta_path = directory / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{directory}: no {META_NAME}: an unfinished snapshot") from None
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{meta_path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise SnapshotError(f"{meta_path}: not a format {META_FORMAT} snapshot record")
    try:
        return Snapshot(
            name=str(meta["name"]),
            directory=directory,
            cow_name=str(meta["cow"]),
            created=str(meta["created"]),
            backing=str(meta["backing"]),
            backing_mtime=int(meta["backing_mtime"]),
            backing_size=int(meta["backing_size"]),
            sectors_written=int(meta["sectors_written"]),
            paused_seconds=float(meta["paused_seconds"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"{meta_path}: field {e} missing or of the wrong type") from None


def list_snapshots(cow_path: Path, store: Path | None = None) -> list[Snapshot]:
    """The finished snapshots of `cow_path`, oldest first (unfinished ones are skipped)."""
    root = store or default_store(cow_path)
    if not root.is_dir():
        return []
    out: list[Snapshot] = []
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or not (directory / META_NAME).exists():
            continue
        snap = _read(directory)
        if snap.cow_name == cow_path.name:
            out.append(snap)
    return sorted(out, key=lambda s: (s.created, s.name))


def get(cow_path: Path, name: str, store: Path | None = None) -> Snapshot:
    check_name(name)
    root = store or default_store(cow_path)
    directory = root / name
    if not directory.is_dir():
        known = ", ".join(s.name for s in list_snapshots(cow_path, store)) or "none"
        raise SnapshotError(f"no snapshot {name!r} of {cow_path} in {root} (known: {known})")
    snap = _read(directory)
    if snap.cow_name != cow_path.name:
        raise SnapshotError(
            f"snapshot {name!r} in {root} was taken of {snap.cow_name}, not {cow_path.name}"
        )
    return snap


def restore(
    cow_path: Path,
    name: str,
    store: Path | None = None,
    progress: Progress | None = None,
    recorded: backing.Recorded | None = None,
) -> Snapshot:
    """Put the snapshot back as `cow_path`; the guest must not be running."""
    p = progress or NullProgress()
    snap = get(cow_path, name, store)
    backing.refuse_in_use(cow_path, f"restore snapshot {name!r} over {cow_path}")
    c, _ = backing.check(snap.cow, None, recorded)  # over the same image, still unchanged
    if not cow_path.parent.is_dir():
        raise DiskError(f"{cow_path.parent}: no such directory")
    src = os.open(snap.cow, os.O_RDONLY | os.O_CLOEXEC)
    fd, temp = hostfile.temp_file(cow_path.parent, cow_path.name)
    try:
        p.step(f"restoring {name} into {cow_path.name}")
        for start, end in hostfile.data_extents(src, 0, c.length):
            hostfile.copy_range(src, start, fd, start, end - start)
        os.ftruncate(fd, c.length)
        os.fsync(fd)
        os.rename(temp, cow_path)
        hostfile.fsync_dir(cow_path.parent)
    except OSError as e:
        if e.errno in hostfile.FULL_ERRNOS:
            raise DiskFull(
                f"{cow_path.parent}: no space left to restore {name!r}; {cow_path} is unchanged"
            ) from None
        raise SnapshotError(f"restoring {name!r} into {cow_path} failed: {e}") from None
    finally:
        os.close(src)
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return snap


def delete(cow_path: Path, name: str, store: Path | None = None) -> None:
    snap = get(cow_path, name, store)
    shutil.rmtree(snap.directory)
