"""Is this the backing file a COW file was made over? The kernel's test, with better words.

The kernel compares the backing file's size and mtime (whole seconds) with the COW header at
every open and refuses the disk on any difference (backing_file_mismatch in ubd_kern.c). warden
does the same before reading or writing anything, and says which value differs and what to do.
"""

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from warden.disk import hostfile
from warden.disk.errors import BackingMismatch, BackingMissing, DiskError, InUse
from warden.uml.cow import CowFile


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
class BackingState:
    """The backing file against the COW header, for `inspect` (never raises)."""

    path: Path
    exists: bool
    size: int | None
    mtime: int | None
    size_ok: bool
    mtime_ok: bool

    @property
    def ok(self) -> bool:
        return self.exists and self.size_ok and self.mtime_ok


def state(cow: CowFile, override: Path | None = None) -> BackingState:
    path = override if override is not None else cow.header.backing_path
    try:
        st = os.stat(path)
    except OSError:
        return BackingState(path, False, None, None, False, False)
    mtime = mtime_seconds(st)
    return BackingState(
        path, True, st.st_size, mtime, st.st_size == cow.header.size, mtime == cow.header.mtime
    )


def require(cow: CowFile, override: Path | None = None) -> Path:
    """The backing file, checked as the kernel checks it; raises naming both values if not."""
    s = state(cow, override)
    h = cow.header
    if not s.exists:
        hint = (
            f"If the image moved, point the COW file at it with "
            f"`warden disk rebase {cow.path} --backing NEWPATH`."
            if override is None
            else ""
        )
        raise BackingMissing(f"{cow.path}: backing file {s.path} does not exist. {hint}".strip())
    if not stat.S_ISREG(os.stat(s.path).st_mode):
        raise DiskError(f"{cow.path}: backing file {s.path} is not a regular file")
    if not s.size_ok:
        raise BackingMismatch(
            f"{cow.path}: backing file {s.path} is {s.size} bytes but the COW header records "
            f"{h.size}: it is not the image this COW file was made over; refusing to use it"
        )
    if not s.mtime_ok:
        raise BackingMismatch(
            f"{cow.path}: backing file {s.path} was modified after the COW file was made: its "
            f"mtime is {show_time(s.mtime or 0)} but the COW header records {show_time(h.mtime)}; "
            "refusing to use it (the guest's disk would be the new base plus old changes). If "
            "only the time stamp changed (a copy without -p), run "
            f"`warden disk rebase {cow.path} --backing {s.path} --ignore-mtime`."
        )
    return s.path


def refuse_in_use(path: Path, doing: str) -> None:
    """Raise InUse if a process (a running kernel) holds an fcntl lock on `path`."""
    pid = hostfile.holder(path)
    if pid is not None:
        raise InUse(
            f"cannot {doing}: {path} is in use by pid {pid} (a running guest holds its lock); "
            "stop the guest first, or take a snapshot of it"
        )
