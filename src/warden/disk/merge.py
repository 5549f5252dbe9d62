"""`merge`: the guest's whole disk as one image (backing file + COW file), like uml_moo.

The output is byte-identical to `uml_moo COW OUT` (tests/test_disk_merge.py checks this on files
a real guest wrote) but is made differently: uml_moo reads every sector of the backing file, 512
bytes at a time; warden reads only what holds data. It copies the data extents of the backing
file outside the written runs, then the data extents of the COW file inside them, all with
copy_file_range, so holes stay holes and nothing is written twice. The result goes to a
temporary file next to OUT that is fsynced and then linked to OUT: OUT is absent or complete.

`merge_in_place` writes the COW file's sectors into the backing file (`uml_moo -d`). It reserves
the space first, so a full disk stops it before any byte of the backing file changes.
"""

import errno
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from warden.disk import backing, hostfile
from warden.disk.errors import DiskError, DiskFull, OutputExists
from warden.progress import NullProgress, Progress
from warden.uml import cow

ZEROS = bytes(1 << 20)


@dataclass(frozen=True)
class MergeResult:
    cow: Path
    backing: Path
    output: Path
    size: int  # bytes of the merged image
    from_backing: int  # bytes copied from the backing file
    from_cow: int  # bytes copied from the COW file
    sectors_written: int
    seconds: float


def subtract(
    extents: Iterable[tuple[int, int]], cuts: list[tuple[int, int]]
) -> Iterator[tuple[int, int]]:
    """The parts of sorted, disjoint `extents` outside sorted, disjoint `cuts`."""
    i = 0
    for start, end in extents:
        while i < len(cuts) and cuts[i][1] <= start:
            i += 1
        j = i
        pos = start
        while j < len(cuts) and cuts[j][0] < end:
            if cuts[j][0] > pos:
                yield pos, cuts[j][0]
            pos = max(pos, cuts[j][1])
            j += 1
        if pos < end:
            yield pos, end


def _byte_runs(c: cow.CowFile) -> list[tuple[int, int]]:
    ss = c.header.sectorsize
    return [(s * ss, (s + n) * ss) for s, n in c.runs()]


def _check_data_area(c: cow.CowFile, runs: list[tuple[int, int]]) -> None:
    if runs and c.length < c.header.data_offset + runs[-1][1]:
        raise cow.CowFormatError(
            f"{c.path}: the data area is truncated: sector {runs[-1][1] // c.header.sectorsize - 1}"
            f" is marked written, its data would end at offset "
            f"{c.header.data_offset + runs[-1][1]}, but the file is {c.length} bytes long"
        )


def _cow_pieces(fd: int, c: cow.CowFile, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte ranges of the guest's disk inside the written runs whose data the COW file holds."""
    base = c.header.data_offset
    return [
        (s - base, e - base)
        for start, end in runs
        for s, e in hostfile.data_extents(fd, base + start, base + end)
    ]


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise DiskError(f"{path}: cannot open ({e.strerror})") from None


def merge(
    cow_path: Path,
    out: Path,
    *,
    backing_path: Path | None = None,
    progress: Progress | None = None,
    sync: bool = True,
    recorded: backing.Recorded | None = None,
) -> MergeResult:
    """Write backing + COW as the new image `out` (which must not exist).

    The backing file is chosen by backing.check: the base warden recorded for a machine's disk,
    else `backing_path` (which the header must name), else the file the header names."""
    t0 = time.monotonic()
    p = progress or NullProgress()
    c, base = backing.check(cow_path, backing_path, recorded)
    backing.refuse_in_use(cow_path, f"merge {cow_path}")
    if os.path.lexists(out):
        raise OutputExists(f"{out} already exists; warden never overwrites: choose a new name")
    if not out.parent.is_dir():
        raise DiskError(f"{out.parent}: no such directory for the merged image")
    h = c.header
    length = h.sectors * h.sectorsize
    runs = _byte_runs(c)
    _check_data_area(c, runs)
    src_b = _open(base, os.O_RDONLY)
    src_c = _open(cow_path, os.O_RDONLY)
    fd = -1
    temp: Path | None = None
    done = total = 0
    try:
        from_backing = list(subtract(hostfile.data_extents(src_b, 0, length), runs))
        from_cow = _cow_pieces(src_c, c, runs)
        total = sum(e - s for s, e in from_backing) + sum(e - s for s, e in from_cow)
        fd, temp = hostfile.temp_file(out.parent, out.name)
        p.step(f"merging {cow_path.name} over {base.name} into {out.name}")
        p.total(total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            p.advance(n)

        for s, e in from_backing:
            if hostfile.copy_range(src_b, s, fd, s, e - s, advance) != e - s:
                raise DiskError(f"{base}: shorter than its recorded size while reading it")
        for s, e in from_cow:
            if hostfile.copy_range(src_c, h.data_offset + s, fd, s, e - s, advance) != e - s:
                raise DiskError(f"{cow_path}: data area ended while reading it")
        os.ftruncate(fd, length)
        if sync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        hostfile.publish(temp, out)
        if sync:
            hostfile.fsync_dir(out.parent)
    except OSError as e:
        if e.errno in hostfile.FULL_ERRNOS:
            raise DiskFull(
                f"{out.parent}: no space left while writing {out.name} ({done} of "
                f"{total} bytes written); the partial output was removed and {base} was not "
                "changed"
            ) from None
        raise DiskError(f"merging {cow_path} into {out} failed: {e}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if temp is not None:
            temp.unlink(missing_ok=True)
        os.close(src_b)
        os.close(src_c)
    return MergeResult(
        cow=cow_path,
        backing=base,
        output=out,
        size=length,
        from_backing=sum(e - s for s, e in from_backing),
        from_cow=sum(e - s for s, e in from_cow),
        sectors_written=c.written(),
        seconds=time.monotonic() - t0,
    )


def _write_zeros(fd: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        n = min(len(ZEROS), end - pos)
        written = os.pwrite(fd, ZEROS[:n], pos)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        pos += written


def merge_in_place(
    cow_path: Path,
    *,
    backing_path: Path | None = None,
    progress: Progress | None = None,
    recorded: backing.Recorded | None = None,
) -> MergeResult:
    """Write the COW file's sectors into its backing file (the backing file changes!).

    Every other COW file over the same backing file becomes invalid (its mtime changes), so this
    refuses while any process holds a lock on the backing file. The COW file is not changed.
    The only file written is the one backing.check chose and verified: for a machine's disk the
    base warden recorded, never a path the (guest-writable) header names instead.
    """
    t0 = time.monotonic()
    p = progress or NullProgress()
    c, base = backing.check(cow_path, backing_path, recorded)
    backing.refuse_in_use(cow_path, f"merge {cow_path}")
    backing.refuse_in_use(base, f"merge {cow_path} into {base}")
    runs = _byte_runs(c)
    _check_data_area(c, runs)
    h = c.header
    src_c = _open(cow_path, os.O_RDONLY)
    dst = _open(base, os.O_RDWR)
    before = os.fstat(dst)
    copied = 0
    try:
        pieces = _cow_pieces(src_c, c, runs)
        holes = list(subtract(runs, pieces))  # written sectors the COW file holds as zeros
        # 1. reserve: a full disk stops us here, before the backing file's content changes
        p.step(f"reserving space in {base.name}")
        try:
            for start, end in runs:
                os.posix_fallocate(dst, start, end - start)
        except OSError as e:
            os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
            if e.errno in hostfile.FULL_ERRNOS:
                raise DiskFull(
                    f"{base}: no space left to merge {cow_path} in place; nothing was written "
                    "and the backing file's time stamps were restored"
                ) from None
            raise
        # 2. write
        p.step(f"merging {cow_path.name} into {base.name}")
        p.total(sum(end - start for start, end in runs))
        for start, end in pieces:
            n = end - start
            if hostfile.copy_range(src_c, h.data_offset + start, dst, start, n, p.advance) != n:
                raise DiskError(f"{cow_path}: data area ended while reading it")
            copied += n
        for start, end in holes:
            _write_zeros(dst, start, end)
            p.advance(end - start)
        os.fsync(dst)
    except OSError as e:
        raise DiskError(
            f"merging {cow_path} into {base} failed after {copied} bytes: {e}; the backing "
            "file may be partly merged (re-run after `warden disk rebase --ignore-mtime`)"
        ) from None
    finally:
        os.close(src_c)
        os.close(dst)
    return MergeResult(
        cow=cow_path,
        backing=base,
        output=base,
        size=os.stat(base).st_size,
        from_backing=0,
        from_cow=copied,
        sectors_written=c.written(),
        seconds=time.monotonic() - t0,
    )
