"""`diff`: the files a guest created, modified and deleted, compared with its base image.

How (the choice is explained in docs/architecture.md, "Disks"): the guest's disk is merged into a
temporary image, and both it and the base image are read with debugfs (warden.disk.debugfs),
never mounted. The COW bitmap says which file-system blocks the guest wrote, which bounds the
work:
1. Both directory trees are listed (`ls -p`, one debugfs batch per tree level); paths only in
   the guest are created, paths only in the base are deleted, and a path whose inode number or
   type differs was replaced.
2. An inode can only have changed if its slot in an inode table was written, or, for its
   content, if one of its blocks was written. So `stat` is asked only of inodes in written
   inode-table blocks, and contents are hashed only for files whose blocks were written or
   whose block map changed. Access times are ignored (reading a file is not a change).
"""

import bisect
import hashlib
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.disk import backing
from warden.disk.debugfs import (
    Debugfs,
    Entry,
    Geometry,
    InodeInfo,
    parse_blocks,
    parse_ls,
    parse_stat,
    parse_stats,
)
from warden.disk.errors import DiffError
from warden.disk.merge import merge
from warden.progress import NullProgress, Progress
from warden.uml import cow

ROOT_INO = 2
MAX_ENTRIES = 10_000_000  # a bound against a crafted file system's endless directories

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def kind_of(mode: int) -> str:
    return _TYPES.get(stat.S_IFMT(mode), "other")


def display(path: bytes) -> str:
    """A path for people and JSON: UTF-8 where it is, \\xNN for other bytes and controls."""
    text = path.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


@dataclass(frozen=True)
class Change:
    kind: str  # created | modified | deleted
    path: str
    type: str  # file, dir, symlink, fifo, socket, chardev, blockdev, other
    size: int | None  # in the guest (None when deleted)
    old_size: int | None  # in the base image (None when created)
    what: tuple[str, ...] = ()  # for modified: content, size, mode, owner, mtime, links,
    #                             target, type, inode (replaced by another file)
    sha256: str | None = None  # of the guest's content, for created and modified files
    target: str | None = None  # where a created or modified symlink points now
    ctime_ns: int | None = None  # the guest inode's change time (the guest's clock)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "old_size": self.old_size,
            "changes": list(self.what),
            "sha256": self.sha256,
            "target": self.target,
            "ctime_ns": self.ctime_ns,
        }


@dataclass(frozen=True)
class DiffReport:
    cow: Path
    base: Path
    changes: tuple[Change, ...]
    sectors_written: int
    blocks_written: int
    inodes_examined: int
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    def as_json(self) -> dict[str, Any]:
        return {
            "cow": str(self.cow),
            "base": str(self.base),
            "created": len(self.of_kind("created")),
            "modified": len(self.of_kind("modified")),
            "deleted": len(self.of_kind("deleted")),
            "sectors_written": self.sectors_written,
            "blocks_written": self.blocks_written,
            "inodes_examined": self.inodes_examined,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "changes": [c.as_json() for c in self.changes],
        }


class _Blocks:
    """The written file-system blocks, as sorted disjoint [start, end) ranges."""

    def __init__(self, c: cow.CowFile, block_size: int):
        ss = c.header.sectorsize
        ranges: list[tuple[int, int]] = []
        for s, n in c.runs():
            first, last = s * ss // block_size, ((s + n) * ss - 1) // block_size + 1
            if ranges and first <= ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
            else:
                ranges.append((first, last))
        self.ranges = ranges
        self._starts = [r[0] for r in ranges]

    def count(self) -> int:
        return sum(e - s for s, e in self.ranges)

    def __contains__(self, block: object) -> bool:
        if not isinstance(block, int):
            return False
        i = bisect.bisect_right(self._starts, block) - 1
        return i >= 0 and block < self.ranges[i][1]

    def any_of(self, blocks: Iterable[int]) -> bool:
        return any(b in self for b in blocks)

    def within(self, start: int, end: int) -> Iterable[int]:
        for s, e in self.ranges:
            yield from range(max(s, start), min(e, end))


def _touched_inodes(geo: Geometry, written: _Blocks) -> set[int]:
    """Inodes whose slot lies in a written inode-table block."""
    out: set[int] = set()
    ipb = geo.inodes_per_block
    for group, table in enumerate(geo.inode_tables):
        for b in written.within(table, table + geo.inode_table_blocks):
            first = group * geo.inodes_per_group + (b - table) * ipb + 1
            out.update(range(first, first + ipb))
    return out


def _walk(dbg: Debugfs) -> dict[bytes, Entry]:
    """Every path of the file system (b"/" for the root), breadth first, one batch per level."""
    tree: dict[bytes, Entry] = {}
    level: list[tuple[bytes, int]] = [(b"", ROOT_INO)]
    seen = {ROOT_INO}
    while level:
        outs = dbg.run([f"ls -p <{ino}>" for _, ino in level])
        following: list[tuple[bytes, int]] = []
        for (prefix, ino), out in zip(level, outs, strict=True):
            for e in parse_ls(out, f"{dbg.image}: directory {display(prefix) or '/'}"):
                if e.name == b"." and ino == ROOT_INO:
                    tree[b"/"] = e
                if e.name in (b".", b".."):
                    continue
                path = prefix + b"/" + e.name
                tree[path] = e
                if e.is_dir and e.ino not in seen:
                    seen.add(e.ino)
                    following.append((path, e.ino))
            if len(tree) > MAX_ENTRIES:
                raise DiffError(f"{dbg.image}: more than {MAX_ENTRIES} files; giving up")
        level = following
    return tree


def _stats(dbg: Debugfs, inos: list[int]) -> dict[int, InodeInfo]:
    outs = dbg.run([f"stat <{i}>" for i in inos])
    return {i: parse_stat(o, f"{dbg.image}: inode {i}") for i, o in zip(inos, outs, strict=True)}


def _blocks(dbg: Debugfs, inos: list[int]) -> dict[int, list[int]]:
    outs = dbg.run([f"blocks <{i}>" for i in inos])
    return {i: parse_blocks(o, f"{dbg.image}: inode {i}") for i, o in zip(inos, outs, strict=True)}


DUMP_BATCH_BYTES = 256 << 20  # dump at most this much content to the work dir at a time
DUMP_BATCH_FILES = 512


def _hashes(dbg: Debugfs, sizes: dict[int, int], work: Path) -> dict[int, str]:
    """sha256 of each inode's content; debugfs dumps them into `work` a batch at a time."""
    out: dict[int, str] = {}
    batch: list[int] = []
    held = 0

    def flush() -> None:
        nonlocal held
        dbg.run([f"dump <{ino}> {work / f'dump-{ino}'}" for ino in batch])
        for ino in batch:
            target = work / f"dump-{ino}"
            h = hashlib.sha256()
            try:
                with open(target, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except FileNotFoundError:
                raise DiffError(f"{dbg.image}: debugfs could not read inode {ino}") from None
            finally:
                target.unlink(missing_ok=True)
            out[ino] = h.hexdigest()
        batch.clear()
        held = 0

    for ino, size in sorted(sizes.items()):
        if batch and (held + size > DUMP_BATCH_BYTES or len(batch) >= DUMP_BATCH_FILES):
            flush()
        batch.append(ino)
        held += size
    if batch:
        flush()
    return out


def _compare(old: InodeInfo, new: InodeInfo) -> list[str]:
    what: list[str] = []
    if old.size != new.size:
        what.append("size")
    if old.mode != new.mode:
        what.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        what.append("owner")
    if old.mtime != new.mtime:
        what.append("mtime")
    if old.links != new.links:
        what.append("links")
    return what


@dataclass
class _Found:
    kind: str
    path: bytes
    guest: Entry | None
    base: Entry | None
    what: list[str]
    size: int | None = None  # exact sizes from stat, when known
    old_size: int | None = None


def _is_data(mode: int) -> bool:
    return stat.S_IFMT(mode) in (stat.S_IFREG, stat.S_IFLNK)


def _link_targets(dbg: Debugfs, inos: list[int], work: Path) -> dict[int, bytes]:
    """Where each symlink points: fast ones from `stat`, slow ones (60 bytes or more) dumped."""
    info = _stats(dbg, inos)
    out = {i: x.fast_link for i, x in info.items() if x.fast_link is not None}
    slow = [i for i in inos if i not in out]
    dbg.run([f"dump <{i}> {work / f'link-{i}'}" for i in slow])
    for i in slow:
        path = work / f"link-{i}"
        try:
            out[i] = path.read_bytes()[: info[i].size]
        except FileNotFoundError:
            raise DiffError(f"{dbg.image}: debugfs could not read symlink inode {i}") from None
        finally:
            path.unlink(missing_ok=True)
    return out


def _change(
    f: _Found, ghash: dict[int, str], targets: dict[int, bytes], ctimes: dict[int, int]
) -> Change:
    g, b = f.guest, f.base
    mode = g.mode if g is not None else b.mode if b is not None else 0
    return Change(
        kind=f.kind,
        path=display(f.path),
        type=kind_of(mode),
        size=f.size if f.size is not None else (g.size if g is not None else None),
        old_size=f.old_size if f.old_size is not None else (b.size if b is not None else None),
        what=tuple(f.what),
        sha256=ghash.get(g.ino) if g is not None and stat.S_ISREG(g.mode) else None,
        target=display(targets[g.ino]) if g is not None and g.ino in targets else None,
        ctime_ns=ctimes.get(g.ino) if g is not None else None,
    )


def _replay_journal(image: Path) -> None:
    """Replay the journal of the temporary merged image, as the guest's next mount would. A
    disk copied from a running (or killed) guest holds the changes of its last commits only in
    its journal until the guest writes them home (5 s later, or never): debugfs reads the home
    locations, and would miss a file the guest had just synced. Only the journal
    (e2fsck -E journal_only), on the temporary copy."""
    exe = shutil.which("e2fsck") or "/usr/sbin/e2fsck"
    proc = subprocess.run(
        [exe, "-E", "journal_only", "-y", str(image)],
        capture_output=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        check=False,
    )
    if proc.returncode >= 4:  # 0: nothing to do, 1-2: replayed; 4 and up: it could not
        err = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-300:]
        raise DiffError(f"{image}: replaying the guest's journal failed: {err}")


def diff(
    cow_path: Path,
    base: Path | None = None,
    *,
    progress: Progress | None = None,
    workdir: Path | None = None,
    recorded: backing.Recorded | None = None,
) -> DiffReport:
    """What the guest that ran on `cow_path` changed in its file system, against `base`.

    The base is the one warden recorded for a machine's disk (`recorded`), else `base` (the
    header must name the same file), else the backing file the COW header records; it must
    match the header's size and mtime. The COW file must not be in use (diff a snapshot of a
    running guest). Temporary files (a merged image, dumped contents) go to `workdir` or $TMPDIR.
    """
    t0 = time.monotonic()
    p = progress or NullProgress()
    c, base_path = backing.check(cow_path, base, recorded)
    backing.refuse_in_use(
        cow_path, f"diff {cow_path} (its guest is running: take a snapshot and diff that)"
    )
    with tempfile.TemporaryDirectory(prefix="warden-diff-", dir=workdir) as tmp:
        work = Path(tmp)
        if any(ch.isspace() or ch in "\"'\\#" for ch in str(work)):
            raise DiffError(f"{work}: debugfs cannot take this path (spaces or quotes)")
        merged = work / "guest.img"
        p.step("merging the guest's disk into a temporary image")
        merge(cow_path, merged, backing_path=base, sync=False, recorded=recorded)
        guest, old = Debugfs(merged), Debugfs(base_path)
        stats = guest.run(["stats"])[0]
        if re.search(rb"^Filesystem features:.*\bneeds_recovery\b", stats, re.MULTILINE):
            _replay_journal(merged)
            stats = guest.run(["stats"])[0]
        geo = parse_stats(stats)
        written = _Blocks(c, geo.block_size)
        touched = _touched_inodes(geo, written)

        p.step("listing both directory trees")
        gtree, btree = _walk(guest), _walk(old)
        found = [_Found("created", x, gtree[x], None, []) for x in gtree.keys() - btree.keys()]
        found += [_Found("deleted", x, None, btree[x], []) for x in btree.keys() - gtree.keys()]
        same: dict[bytes, Entry] = {}  # paths whose inode number and type did not change
        for x in gtree.keys() & btree.keys():
            g, b = gtree[x], btree[x]
            if g.ino == b.ino and stat.S_IFMT(g.mode) == stat.S_IFMT(b.mode):
                same[x] = g
            else:
                what = ["inode"]
                if stat.S_IFMT(g.mode) != stat.S_IFMT(b.mode):
                    what.append("type")
                found.append(_Found("modified", x, g, b, what))

        p.step("examining the written inodes and blocks")
        mode = {e.ino: e.mode for e in same.values()}
        data = sorted(i for i, m in mode.items() if _is_data(m))
        gblocks = _blocks(guest, data)
        hit = {i for i in data if written.any_of(gblocks[i])}
        suspects = sorted(set(mode) & (touched | hit))
        ginfo, binfo = _stats(guest, suspects), _stats(old, suspects)
        bblocks = _blocks(old, [i for i in suspects if i in gblocks])
        reread = {
            i: ginfo[i].size
            for i in suspects
            if i in gblocks and (i in hit or gblocks[i] != bblocks[i])
        }
        ghash = _hashes(guest, reread, work)
        bhash = _hashes(old, {i: binfo[i].size for i in reread}, work)
        for x, g in same.items():
            i = g.ino
            if i not in ginfo:
                continue  # neither its inode nor its blocks were written: unchanged
            what = _compare(binfo[i], ginfo[i])
            if stat.S_ISDIR(g.mode):
                # entries coming and going show as paths, and move the directory's mtime
                what = [w for w in what if w in ("mode", "owner")]
            if stat.S_ISLNK(g.mode):
                if ghash.get(i) != bhash.get(i) or ginfo[i].fast_link != binfo[i].fast_link:
                    what.insert(0, "target")
            elif ghash.get(i) != bhash.get(i):
                what.insert(0, "content")
            if what:
                found.append(_Found("modified", x, g, btree[x], what, ginfo[i].size, binfo[i].size))

        p.step("hashing new and changed files")
        want = {
            f.guest.ino: f.size if f.size is not None else (f.guest.size or 0)
            for f in found
            if f.guest is not None and stat.S_ISREG(f.guest.mode) and f.guest.ino not in ghash
        }
        ghash.update(_hashes(guest, want, work))
        links = sorted(
            {
                f.guest.ino
                for f in found
                if f.guest is not None and f.kind != "deleted" and stat.S_ISLNK(f.guest.mode)
            }
        )
        targets = _link_targets(guest, links, work)
        # when each created or modified inode last changed (one more batch, only of those)
        unstated = sorted({f.guest.ino for f in found if f.guest is not None} - ginfo.keys())
        ginfo.update(_stats(guest, unstated))
        ctimes = {i: x.ctime_ns for i, x in ginfo.items()}

    changes = [_change(f, ghash, targets, ctimes) for f in found]
    changes.sort(key=lambda ch: (ch.path, ch.kind))
    return DiffReport(
        cow=cow_path,
        base=base_path,
        changes=tuple(changes),
        sectors_written=c.written(),
        blocks_written=written.count(),
        inodes_examined=len(suspects),
        seconds=time.monotonic() - t0,
    )
