"""Is this the backing file a COW file was made over? The kernel's test, with better words.

The kernel compares the backing file's size and mtime (whole seconds) with the COW header at
every open and refuses the disk on any difference (backing_file_mismatch in ubd_kern.c). warden
does the same before reading or writing anything, and says which value differs and what to do.

Which file is "the backing file" is never the header's decision alone: a guest writes its own
COW file, header included (docs/security.md, "Disks and jails"). `check` picks it:
- a machine's disk (or a snapshot of it): the base warden recorded for the machine at create or
  reset (`Recorded`), whatever path the header names; the header's size and mtime must match it;
- a bare path with a backing file the user named: that file, and the header must name the same
  file (refused with both values otherwise: `warden disk rebase` changes what a header names);
- a bare path alone: the file the header names.
Only then is the bitmap read, bounded by that file's real size (warden.uml.cow.open_cow).
"""

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from warden.disk import hostfile
from warden.disk.errors import BackingMismatch, BackingMissing, DiskError, InUse
from warden.uml import cow
from warden.uml.cow import CowFile, CowHeader


def kernel_path(path: Path) -> bytes:
    """`path` as the kernel records it: its directory resolved, its last component as given.

    (absolutize() in cow_user.c changes into the directory and calls getcwd().)
    """
    directory = os.path.dirname(os.fspath(path)) or "."
    return os.fsencode(os.path.join(os.path.realpath(directory), os.path.basename(path)))


def mtime_seconds(st: os.stat_result) -> int:
    """st_mtime in whole seconds, as the kernel reads it."""
    return st.st_mtime_ns // 1_000_000_000


def show_time(seconds: int) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{seconds} ({when:%Y-%m-%d %H:%M:%S} UTC)"


@dataclass(frozen=True)
class Recorded:
    """The base image warden recorded for a machine (the machines table of warden.db)."""

    machine: str
    base: Path


def same_file(a: Path, b: Path) -> bool:
    """Do `a` and `b` name one file: the same path as the kernel records it, or the same inode
    (as path_requires_switch in ubd_kern.c decides)?"""
    if kernel_path(a) == kernel_path(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@dataclass(frozen=True)
class BackingState:
    """The backing file against the COW header, for `inspect` (never raises)."""

    path: Path
    exists: bool
    size: int | None
    mtime: int | None
    size_ok: bool
    mtime_ok: bool
    named_ok: bool = True  # the header names this file (a user-named or recorded one may differ)

    @property
    def ok(self) -> bool:
        return self.exists and self.size_ok and self.mtime_ok


def state(
    cow_path: Path, h: CowHeader, override: Path | None = None, recorded: Recorded | None = None
) -> BackingState:
    """The file warden would use as the backing file of `cow_path`, held against its header."""
    path = choose(h, override, recorded)
    named_ok = path == h.backing_path or same_file(path, h.backing_path)
    try:
        st = os.stat(path)
    except OSError:
        return BackingState(path, False, None, None, False, False, named_ok)
    mtime = mtime_seconds(st)
    return BackingState(
        path, True, st.st_size, mtime, st.st_size == h.size, mtime == h.mtime, named_ok
    )


def choose(h: CowHeader, override: Path | None, recorded: Recorded | None) -> Path:
    if recorded is not None:
        return recorded.base
    return override if override is not None else h.backing_path


def _named(h: CowHeader) -> str:
    return (
        f"its header names {os.fsdecode(h.backing)!r} ({h.size} bytes, mtime {show_time(h.mtime)})"
    )


def _recorded_mismatch(
    cow_path: Path, h: CowHeader, r: Recorded, size: int, mtime: int
) -> BackingMismatch:
    keep = (
        f"to keep the guest's changes over it, `warden disk rebase {cow_path} --backing {r.base} "
        "--ignore-mtime` (only if you know the image did not change); "
        if size == h.size
        else ""
    )
    return BackingMismatch(
        f"{cow_path}: {_named(h)}, but the base warden recorded for machine {r.machine!r} is "
        f"{r.base} ({size} bytes, mtime {show_time(mtime)}): either the image changed after "
        "the disk was made or the header was rewritten (a guest can write its own disk). "
        f"warden uses only the base it recorded; {keep}to start the guest afresh, "
        f"`warden reset {r.machine}`"
    )


def require_header(
    cow_path: Path, h: CowHeader, override: Path | None = None, recorded: Recorded | None = None
) -> Path:
    """The backing file for `cow_path` (see the module's doc), checked as the kernel checks it
    against the header `h`; raises naming both values if it is not the image it was made over."""
    path = choose(h, override, recorded)
    if recorded is not None and override is not None and not same_file(override, path):
        raise BackingMismatch(
            f"{cow_path} is a disk of machine {recorded.machine!r}, made over {path} (the base "
            f"warden recorded); you named {override}: refusing to use it"
        )
    if recorded is None and override is not None and not same_file(override, h.backing_path):
        raise BackingMismatch(
            f"{cow_path}: {_named(h)}, but you named {override} as its backing file: refusing "
            "to use either. If the image moved, point the COW file at it first with "
            f"`warden disk rebase {cow_path} --backing {override}`."
        )
    whose = f"machine {recorded.machine!r}'s base" if recorded is not None else "backing file"
    try:
        st = os.stat(path)
    except OSError:
        hint = (
            f" If the image moved, point the COW file at it with "
            f"`warden disk rebase {cow_path} --backing NEWPATH`."
            if recorded is None and override is None
            else ""
        )
        raise BackingMissing(f"{cow_path}: {whose} {path} does not exist.{hint}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DiskError(f"{cow_path}: {whose} {path} is not a regular file")
    mtime = mtime_seconds(st)
    if recorded is not None and (st.st_size != h.size or mtime != h.mtime):
        raise _recorded_mismatch(cow_path, h, recorded, st.st_size, mtime)
    if st.st_size != h.size:
        raise BackingMismatch(
            f"{cow_path}: backing file {path} is {st.st_size} bytes but the COW header records "
            f"{h.size}: it is not the image this COW file was made over; refusing to use it"
        )
    if mtime != h.mtime:
        raise BackingMismatch(
            f"{cow_path}: backing file {path} was modified after the COW file was made: its "
            f"mtime is {show_time(mtime)} but the COW header records {show_time(h.mtime)}; "
            "refusing to use it (the guest's disk would be the new base plus old changes). If "
            "only the time stamp changed (a copy without -p), run "
            f"`warden disk rebase {cow_path} --backing {path} --ignore-mtime`."
        )
    return path


def check(
    cow_path: Path, override: Path | None = None, recorded: Recorded | None = None
) -> tuple[CowFile, Path]:
    """The COW file (header and bitmap) and its backing file, checked in that order: the header
    alone first, then the backing file against it, and only then the bitmap, whose length the
    verified backing file's size bounds."""
    h, _ = cow.read_header(cow_path)
    path = require_header(cow_path, h, override, recorded)
    c = cow.open_cow(cow_path, h.size)
    if c.header != h:
        raise DiskError(f"{cow_path}: its header changed while it was read; is a guest running?")
    return c, path


def refuse_in_use(path: Path, doing: str) -> None:
    """Raise InUse if a process (a running kernel) holds an fcntl lock on `path`."""
    pid = hostfile.holder(path)
    if pid is not None:
        raise InUse(
            f"cannot {doing}: {path} is in use by pid {pid} (a running guest holds its lock); "
            "stop the guest first, or take a snapshot of it"
        )
