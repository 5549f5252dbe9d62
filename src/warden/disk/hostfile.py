"""Host file mechanics the disk operations share.

- data_extents / copy_range: sparse-aware copies. Only the data extents of a file are read
  (SEEK_DATA/SEEK_HOLE) and they are moved in the kernel (copy_file_range; sendfile where the
  two files are on different file systems, which copy_file_range refuses with EXDEV).
  On a file system that shares blocks between files (XFS, btrfs) copy_file_range clones the
  extents instead (reflink): a snapshot's copy, and so the guest's pause, takes ~1 ms whatever
  the guest wrote (benchmarks/snapshot.py). can_reflink says whether a directory offers it.
- holder: which process holds an fcntl lock on a file. UML takes a write lock on a COW file and
  a read lock on its backing file while it runs (docs/formats/ubd-cow.md, "Locks").
- temp_file / publish: a result is written to a hidden temporary file next to its final name and
  published with link(2), which fails instead of overwriting a file that appeared meanwhile.
  A temporary's name carries its writer's pid: what a killed writer left (kill -9 of a merge or
  of the daemon during a snapshot, found by the fault campaign) is swept by the next writer of
  the same name, since a writer that is gone never finishes it.
"""

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from warden.disk.errors import OutputExists
from warden.statefile import fsync_dir

__all__ = ["fsync_dir"]  # the one definition is warden.statefile's

CHUNK = 64 << 20  # bytes per copy call: small enough for a live progress bar
# errno values that mean "the disk is full", whoever reports it
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# copy_file_range cannot do this pair of files: fall back to sendfile
_NO_CFR = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)

# struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; };
# as laid out on x86_64 (4 bytes of padding after l_whence and after l_pid)
FLOCK = struct.Struct("=hh4xqqi4x")


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(first, last+1) byte ranges of `fd` within [start, end) that hold data (not holes)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            raise
        if data >= end:
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, min(hole, end)
        pos = hole


def _sendfile(src: int, src_off: int, dst: int, dst_off: int, n: int) -> int:
    os.lseek(dst, dst_off, os.SEEK_SET)
    return os.sendfile(dst, src, src_off, n)


def copy_range(
    src: int,
    src_off: int,
    dst: int,
    dst_off: int,
    length: int,
    advance: Callable[[int], None] | None = None,
) -> int:
    """Copy `length` bytes; returns how many were copied (fewer only at the end of `src`)."""
    done = 0
    use_cfr = True
    while done < length:
        n = min(CHUNK, length - done)
        if use_cfr:
            try:
                k = os.copy_file_range(src, dst, n, src_off + done, dst_off + done)
            except OSError as e:
                if e.errno not in _NO_CFR:
                    raise
                use_cfr = False
                continue
        else:
            k = _sendfile(src, src_off + done, dst, dst_off + done, n)
        if k == 0:
            break
        done += k
        if advance is not None:
            advance(k)
    return done


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def can_reflink(directory: Path) -> bool:
    """Whether files in `directory` can share blocks (FICLONE works between two of them)."""
    with contextlib.ExitStack() as stack:
        try:
            fds = []
            for _ in range(2):
                fd, path = temp_file(directory, "reflink-probe")
                stack.callback(os.close, fd)
                stack.callback(path.unlink, missing_ok=True)
                fds.append(fd)
            os.pwrite(fds[0], b"\0" * 4096, 0)
            fcntl.ioctl(fds[1], FICLONE, fds[0])
        except OSError:
            return False
    return True


def holder(path: Path) -> int | None:
    """The pid of a process holding any fcntl lock on `path` (None if none, or no such file).

    Asks for the lock a writer would need (F_WRLCK, whole file) with F_GETLK, which conflicts
    with every lock: the kernel's write lock on a COW file and its read lock on a backing file.
    A lock held by this very process does not show (POSIX locks do not conflict with their owner).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        request = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, request))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else pid


_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)-[0-9a-f]+")


def _temp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries of `name` (of any name: None) in `directory` whose writer is
    gone; returns them. (A reused pid keeps a leftover until that process ends: never a live
    writer's file.)"""
    swept: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return swept
    for entry in entries:
        m = _TEMP.fullmatch(entry.name)
        if m is None or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        swept.append(entry)
    return swept


def temp_file(directory: Path, name: str) -> tuple[int, Path]:
    """A new hidden file in `directory` (same file system as the final name), open for writing.
    Leftovers of killed writers of the same name go first."""
    sweep_temps(directory, name)
    path = directory / _temp_name(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return fd, path


def temp_dir(directory: Path, name: str) -> Path:
    """A new hidden directory in `directory` for a result made of several files, renamed to
    `name` once whole. Leftovers of killed writers of the same name go first."""
    sweep_temps(directory, name)
    path = directory / _temp_name(name)
    path.mkdir(mode=0o755)
    return path


def publish(temp: Path, final: Path) -> None:
    """Give `temp` its final name, never replacing a file; `temp` is gone afterwards."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise OutputExists(
            f"{final} already exists; warden never overwrites a file: choose another name "
            "or remove it first"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def disk_usage(path: Path) -> int:
    """Bytes the file really takes on disk (sparse files take less than their length)."""
    return os.stat(path).st_blocks * 512
