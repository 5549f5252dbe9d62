"""`rebase`: the backing file moved; point the COW file's header at its new path.

The kernel does the same at boot when the command line names another backing path whose size
and mtime match ("Switching backing file", ubd_kern.c); this does it without a boot. The size
must always match. The mtime must match too unless the caller says it may differ (a copy
without `cp -p` changes it): then the header gets the new mtime, which is the caller's promise
that the content is the same.

Only the bytes that change are written (path, its NUL, the mtime), with one pwrite and an
fsync; for paths shorter than ~4000 bytes they all lie in the file's first 4 KiB block.
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from warden.disk import backing
from warden.disk.errors import BackingMismatch, BackingMissing, DiskError
from warden.uml import cow


@dataclass(frozen=True)
class RebaseResult:
    path: Path
    old: cow.CowHeader
    new: cow.CowHeader
    bytes_written: int


def rebase(
    cow_path: Path,
    new_backing: Path,
    *,
    check_mtime: bool = True,
    recorded: backing.Recorded | None = None,
) -> RebaseResult:
    """Point the header of `cow_path` at `new_backing` (only the header is read and written).

    For a machine's disk the only backing file it may name is the base warden recorded."""
    h, _ = cow.read_header(cow_path)
    if recorded is not None and not backing.same_file(new_backing, recorded.base):
        raise BackingMismatch(
            f"{cow_path} is a disk of machine {recorded.machine!r}, whose base warden recorded "
            f"as {recorded.base}; refusing to point it at {new_backing} (`warden reset "
            f"{recorded.machine}` starts it afresh on the image's current build)"
        )
    backing.refuse_in_use(cow_path, f"rebase {cow_path}")
    try:
        st = os.stat(new_backing)
    except FileNotFoundError:
        raise BackingMissing(f"new backing file {new_backing} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise DiskError(f"new backing file {new_backing} is not a regular file")
    if st.st_size != h.size:
        raise BackingMismatch(
            f"{new_backing} is {st.st_size} bytes but {cow_path} was made over a file of "
            f"{h.size} bytes: not the same image; refusing to rebase"
        )
    mtime = backing.mtime_seconds(st)
    if check_mtime and mtime != h.mtime:
        raise BackingMismatch(
            f"{new_backing} has mtime {backing.show_time(mtime)} but {cow_path} records "
            f"{backing.show_time(h.mtime)}: it may have been modified; refusing to rebase. If "
            "you know it is the same image (copied without keeping time stamps), add "
            "--ignore-mtime"
        )
    path = backing.kernel_path(new_backing)
    fd = os.open(cow_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, h.header_size, 0)
        new_raw = cow.patch_header(raw, h, path, mtime)
        n = _write_changed(fd, raw, new_raw, cow_path)
    finally:
        os.close(fd)
    return RebaseResult(cow_path, h, cow.parse_header(new_raw, str(cow_path)), n)


def _write_changed(fd: int, raw: bytes, new_raw: bytes, cow_path: Path) -> int:
    """Write the span of `new_raw` that differs from `raw` (one pwrite, then fsync)."""
    changed = [i for i in range(len(raw)) if raw[i] != new_raw[i]]
    if not changed:
        return 0
    first, last = changed[0], changed[-1] + 1
    n = os.pwrite(fd, new_raw[first:last], first)
    if n != last - first:
        raise DiskError(f"{cow_path}: short write of the header ({n} bytes)")
    os.fsync(fd)
    return n


def name_backing(cow_path: Path, name: bytes) -> bytes | None:
    """Make the header of `cow_path` name `name` as its backing file, nothing else changed (no
    check: the caller has held the header's size and mtime against the base it chose).

    Returns the name the header held if it had to change, None if it named `name` already.
    The daemon calls it before each boot so that the header names the base exactly as the
    kernel is told it: the kernel then neither stats nor prints another path."""
    fd = os.open(cow_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        raw = os.pread(fd, cow.HEADER_READ, 0)
        h = cow.parse_header(raw, str(cow_path))
        if h.backing == name:
            return None
        raw = raw[: h.header_size]
        _write_changed(fd, raw, cow.patch_header(raw, h, name, h.mtime), cow_path)
    finally:
        os.close(fd)
    return h.backing
