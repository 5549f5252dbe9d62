"""warden.disk on files, without a guest: create, inspect, merge, rebase, snapshots, and every
kind of bad input. COW files here are built with the codec (the guest-written ones are in
test_disk_kernel.py); merges are compared with Debian's uml_moo and with a plain reading of the
format."""

import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from warden.disk import create, inspect, merge, rebase, snapshot
from warden.disk.backing import kernel_path
from warden.disk.errors import (
    BackingMismatch,
    BackingMissing,
    DiffError,
    DiskFull,
    InUse,
    OutputExists,
    SnapshotError,
)
from warden.errors import MconsoleError
from warden.uml import cow
from warden.uml.cow import CowFormatError, CowHeader, Layout

UML_MOO = "/usr/bin/uml_moo"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a size-limited tmpfs (root)")


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_base(path: Path, size: int, seed: int = 1, pieces: int = 8) -> None:
    """A sparse file of `size` bytes with random data in `pieces` places (and holes between)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(pieces):
            at = rng.randrange(0, size - 4096) & ~511
            f.seek(at)
            f.write(rng.randbytes(rng.randint(1, 64) * 512))


def make_cow(
    path: Path,
    base: Path,
    runs: list[tuple[int, int]],
    layout: Layout = Layout.V3,
    seed: int = 2,
    holes: tuple[tuple[int, int], ...] = (),
) -> CowHeader:
    """A COW file over `base` whose bitmap has `runs` (sector, count) set, with random data for
    them, except sectors in `holes` (sector, count), which stay holes (read as zeros)."""
    st = os.stat(base)
    align = 4096 if layout in (Layout.V3, Layout.V3_BROKEN) else 512
    h = CowHeader(layout, kernel_path(base), int(st.st_mtime), st.st_size, 512, align)
    bitmap = bytearray(h.bitmap_len)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(cow.encode_header(h))
        f.truncate(h.file_size)
        for s, n in runs:
            cow.mark(bitmap, s, n)
            f.seek(h.data_offset + s * 512)
            f.write(rng.randbytes(n * 512))
        f.seek(h.bitmap_offset)
        f.write(bitmap)
    for s, n in holes:
        _punch(path, h.data_offset + s * 512, n * 512)
    return h


def _punch(path: Path, offset: int, length: int) -> None:
    subprocess.run(
        ["fallocate", "--punch-hole", "--offset", str(offset), "--length", str(length), path],
        check=True,
    )


def expected_merge(cow_path: Path, base: Path) -> bytes:
    """backing + COW, read the slow obvious way from the format doc."""
    c = cow.open_cow(cow_path, base.stat().st_size)
    h = c.header
    out = bytearray(base.read_bytes()[: h.sectors * h.sectorsize])
    data = cow_path.read_bytes()
    for s, n in c.runs():
        a, b = h.data_offset + s * 512, h.data_offset + (s + n) * 512
        out[s * 512 : (s + n) * 512] = data[a:b].ljust(n * 512, b"\0")
    return bytes(out)


def uml_moo(*args: str | Path) -> None:
    subprocess.run([UML_MOO, *map(str, args)], check=True, capture_output=True)


@contextmanager
def locked_by_child(path: Path, write: bool) -> Iterator[int]:
    """Another process holds an fcntl lock on `path` (as a running kernel would)."""
    code = (
        "import fcntl, sys\n"
        f"f = open({str(path)!r}, {'r+b' if write else 'rb'!r})\n"
        f"fcntl.lockf(f, fcntl.{'LOCK_EX' if write else 'LOCK_SH'} | fcntl.LOCK_NB)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "locked"
            yield child.pid
        finally:
            child.stdin.close()
            child.wait(10)


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True)
        where.rmdir()


RUNS = [(0, 1), (7, 3), (100, 64), (1000, 200), (2045, 3)]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base.img"
    make_base(base, 2 << 20)
    c = tmp_path / "disk.cow"
    make_cow(c, base, RUNS)
    return c, base


# --- create -------------------------------------------------------------------------------


def test_create_writes_the_header_the_kernel_writes(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    make_base(base, 64 << 20)
    path = tmp_path / "new.cow"
    h = create.create(path, base)
    c = cow.open_cow(path, 64 << 20)
    st = os.stat(base)
    assert c.header == h
    assert (h.layout, h.sectorsize, h.alignment) == (Layout.V3, 512, 4096)
    assert (h.backing, h.mtime, h.size) == (os.fsencode(base), int(st.st_mtime), 64 << 20)
    assert c.length == h.data_offset + h.size and c.written() == 0
    assert os.stat(path).st_blocks * 512 <= 16384  # sparse: the header only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_create_resolves_the_directory_like_the_kernel(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    make_base(real / "base.img", 1 << 20)
    (tmp_path / "link").symlink_to(real)
    h = create.create(tmp_path / "a.cow", tmp_path / "link" / "base.img")
    assert h.backing == os.fsencode(real / "base.img")


def test_create_refuses_bad_input(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    make_base(base, 1 << 20)
    (tmp_path / "taken.cow").write_bytes(b"precious")
    with pytest.raises(OutputExists, match="taken.cow already exists"):
        create.create(tmp_path / "taken.cow", base)
    assert (tmp_path / "taken.cow").read_bytes() == b"precious"
    with pytest.raises(BackingMissing, match="nope.img does not exist"):
        create.create(tmp_path / "a.cow", tmp_path / "nope.img")
    with pytest.raises(merge.DiskError, match="not a regular file"):
        create.create(tmp_path / "a.cow", tmp_path)
    with pytest.raises(merge.DiskError, match="no such directory"):
        create.create(tmp_path / "no" / "a.cow", base)
    assert not (tmp_path / "a.cow").exists()


# --- inspect ------------------------------------------------------------------------------


def test_inspect_counts_and_checks(pair: tuple[Path, Path]) -> None:
    c, base = pair
    i = inspect.inspect(c)
    written = sum(n for _, n in RUNS)
    assert i.sectors_written == written and i.bytes_written == written * 512
    assert i.percent_written == pytest.approx(100 * written / 4096)
    assert i.backing.ok and i.in_use_by is None and i.warnings == ()
    j = i.as_json()
    assert j["backing"]["recorded_size"] == j["backing"]["actual_size"] == 2 << 20
    os.utime(base, (time.time(), time.time() + 100))
    j = inspect.inspect(c).as_json()
    assert j["backing"]["mtime_ok"] is False and j["backing"]["size_ok"] is True
    base.unlink()
    assert inspect.inspect(c).as_json()["backing"]["exists"] is False


# --- merge --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(Layout))
def test_merge_is_byte_identical_to_uml_moo(tmp_path: Path, layout: Layout) -> None:
    base = tmp_path / "base.img"
    make_base(base, (2 << 20) + 3 * 512)  # a sector count that is not a multiple of 8
    c = tmp_path / "disk.cow"
    h = make_cow(c, base, [r for r in RUNS if r[0] + r[1] <= 4096], layout, holes=((1008, 24),))
    ours, theirs = tmp_path / "ours.img", tmp_path / "moo.img"
    r = merge.merge(c, ours)
    uml_moo(c, theirs)
    assert sha(ours) == sha(theirs)
    assert ours.read_bytes() == expected_merge(c, base)
    assert r.size == h.sectors * 512 == ours.stat().st_size
    # the hole is not copied (exactly, where the data area is block-aligned: v3)
    written = sum(n for _, n in RUNS) * 512
    assert r.from_cow < written
    if layout in (Layout.V3, Layout.V3_BROKEN):
        assert r.from_cow == written - 24 * 512
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_merge_keeps_holes(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    make_base(base, 64 << 20, pieces=2)
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(5000, 16)])
    out = tmp_path / "out.img"
    merge.merge(c, out)
    assert os.stat(out).st_blocks * 512 < 1 << 20  # 64 MiB long, well under 1 MiB on disk


def test_merge_refuses_a_missing_backing_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, base = pair
    moved = tmp_path / "moved.img"
    base.rename(moved)  # moved: the recorded path no longer exists
    out = tmp_path / "out.img"
    with pytest.raises(BackingMissing, match=f"backing file {base} does not exist.*rebase"):
        merge.merge(c, out)
    assert not out.exists()
    # Unlike uml_moo -b, naming another file than the header does is refused with both (a
    # guest writes its own header): the header is pointed at the new place first.
    with pytest.raises(BackingMismatch, match=f"names '{base}'.*you named {moved}.*rebase"):
        merge.merge(c, out, backing_path=moved)
    assert not out.exists()
    rebase.rebase(c, moved)
    merge.merge(c, out, backing_path=moved)
    assert out.read_bytes() == expected_merge(c, moved)


def test_merge_refuses_a_modified_backing_file(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, base = pair
    recorded = cow.read_header(c)[0].mtime
    os.utime(base, (recorded + 3600, recorded + 3600))
    out = tmp_path / "out.img"
    with pytest.raises(BackingMismatch, match=rf"mtime is {recorded + 3600} .* records {recorded}"):
        merge.merge(c, out)
    os.utime(base, (recorded, recorded))
    with open(base, "ab") as f:
        f.write(b"x" * 512)
    os.utime(base, (recorded, recorded))
    with pytest.raises(BackingMismatch, match=rf"is {(2 << 20) + 512} bytes .* records {2 << 20}"):
        merge.merge(c, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_merge_refuses_an_existing_output(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, _ = pair
    out = tmp_path / "out.img"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExists, match="out.img already exists"):
        merge.merge(c, out)
    assert out.read_bytes() == b"keep me"


def test_merge_refuses_a_truncated_data_area(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, _ = pair
    h = cow.read_header(c)[0]
    os.truncate(c, h.data_offset + 1500 * 512)  # sectors 1000-1199 are written; cut inside
    with pytest.raises(CowFormatError, match="data area is truncated: sector 2047"):
        merge.merge(c, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


def test_merge_refuses_a_cow_file_a_kernel_holds(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, _ = pair
    with locked_by_child(c, write=True) as pid:
        with pytest.raises(InUse, match=f"in use by pid {pid}"):
            merge.merge(c, tmp_path / "out.img")
    merge.merge(c, tmp_path / "out.img")


@needs_root
def test_merge_onto_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.write(random.Random(3).randbytes(24 << 20))  # 24 MiB of data: no holes to skip
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(0, 64)])
    before = (sha(base), os.stat(base).st_mtime_ns)
    with small_tmpfs(tmp_path / "small", "8m") as small:
        with pytest.raises(DiskFull, match=r"no space left .*partial output was removed"):
            merge.merge(c, small / "out.img")
        assert list(small.iterdir()) == []
    assert (sha(base), os.stat(base).st_mtime_ns) == before


def test_merge_in_place_matches_uml_moo_d(tmp_path: Path) -> None:
    results = []
    for who in ("ours", "moo"):
        d = tmp_path / who
        d.mkdir()
        base = d / "base.img"
        make_base(base, 2 << 20, pieces=40)  # dense: the hole below lands on data
        c = d / "disk.cow"
        make_cow(c, base, RUNS, holes=((1000, 50),))
        expected = expected_merge(c, base)
        if who == "ours":
            merge.merge_in_place(c)
        else:
            uml_moo("-d", c)
        assert base.read_bytes() == expected
        results.append(sha(base))
    assert results[0] == results[1]


def test_merge_in_place_refuses_a_backing_file_in_use(pair: tuple[Path, Path]) -> None:
    c, base = pair
    before = sha(base)
    with locked_by_child(base, write=False) as pid:
        with pytest.raises(InUse, match=rf"{base} is in use by pid {pid}"):
            merge.merge_in_place(c)
    assert sha(base) == before


@needs_root
def test_merge_in_place_onto_a_full_disk_changes_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "4m") as small:
        base = small / "base.img"
        make_base(base, 32 << 20, pieces=2)  # sparse: 32 MiB long, little data
        c = tmp_path / "disk.cow"
        make_cow(c, base, [(0, 4096), (40000, 8192)])  # 6 MiB to place in holes
        before = (sha(base), os.stat(base).st_mtime_ns)
        with pytest.raises(DiskFull, match="nothing was written"):
            merge.merge_in_place(c)
        assert (sha(base), os.stat(base).st_mtime_ns) == before


# --- rebase -------------------------------------------------------------------------------


def test_rebase_after_a_move(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, base = pair
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "base.img"
    base.rename(moved)  # rename keeps the mtime
    before = c.read_bytes()
    r = rebase.rebase(c, moved)
    after = c.read_bytes()
    assert r.new.backing == os.fsencode(moved) and r.new.mtime == r.old.mtime
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed and changed[-1] < 4096 and r.bytes_written <= 4096
    assert inspect.inspect(c).backing.ok
    assert merge.merge(c, tmp_path / "out.img").output.read_bytes() == expected_merge(c, moved)


def test_rebase_checks_size_and_mtime(pair: tuple[Path, Path], tmp_path: Path) -> None:
    c, base = pair
    before = c.read_bytes()
    other = tmp_path / "other.img"
    make_base(other, 1 << 20)
    with pytest.raises(BackingMismatch, match=f"is {1 << 20} bytes but .* {2 << 20} bytes"):
        rebase.rebase(c, other)
    copy = tmp_path / "copy.img"
    copy.write_bytes(base.read_bytes())  # same content, new mtime (a copy without -p)
    os.utime(copy, (1, 1))
    with pytest.raises(BackingMismatch, match=r"mtime 1 \(1970-01-01.*--ignore-mtime"):
        rebase.rebase(c, copy)
    with pytest.raises(BackingMissing, match="does not exist"):
        rebase.rebase(c, tmp_path / "nope.img")
    assert c.read_bytes() == before
    r = rebase.rebase(c, copy, check_mtime=False)
    assert r.new.mtime == 1 and inspect.inspect(c).backing.ok


def test_rebase_refuses_a_cow_file_in_use(pair: tuple[Path, Path]) -> None:
    c, base = pair
    with locked_by_child(c, write=True), pytest.raises(InUse):
        rebase.rebase(c, base)


# --- snapshots (the mconsole side is exercised with a real guest in test_disk_kernel.py) ----


class RecordingClient:
    """Records mconsole commands; `on_stop` runs when the guest would stop."""

    def __init__(self, on_stop: object = None, fail: set[str] | None = None):
        self.commands: list[str] = []
        self.on_stop = on_stop
        self.fail = fail or set()
        self.stopped = False

    def request(self, command: str, timeout: float | None = None) -> str:
        self.commands.append(command)
        if command in self.fail:
            raise MconsoleError(f"{command} failed")
        if command == "stop":
            self.stopped = True
            if callable(self.on_stop):
                self.on_stop()
            return "stopped"
        if command == "go":
            if not self.stopped:
                raise MconsoleError("'go' failed: Not stopped")
            self.stopped = False
        return ""


def test_snapshot_list_restore_delete(pair: tuple[Path, Path]) -> None:
    c, base = pair
    client = RecordingClient()
    s = snapshot.take(c, client, "before")
    assert client.commands == ["stop", "go"] and not client.stopped
    assert s.cow.read_bytes() == c.read_bytes() and s.sectors_written == sum(n for _, n in RUNS)
    assert [x.name for x in snapshot.list_snapshots(c)] == ["before"]
    with pytest.raises(SnapshotError, match="already exists"):
        snapshot.take(c, RecordingClient(), "before")
    original = c.read_bytes()
    make_cow(c, base, [(3, 1)], seed=9)  # the guest went on writing
    snapshot.restore(c, "before")
    assert c.read_bytes() == original
    snapshot.delete(c, "before")
    assert snapshot.list_snapshots(c) == []
    with pytest.raises(SnapshotError, match="no snapshot 'before'"):
        snapshot.restore(c, "before")


def test_snapshot_always_resumes_the_guest(pair: tuple[Path, Path]) -> None:
    c, base = pair
    client = RecordingClient(on_stop=lambda: os.truncate(c, 100))  # the copy will fail
    with pytest.raises(CowFormatError):
        snapshot.take(c, client, "broken")
    assert client.commands == ["stop", "go"] and not client.stopped
    assert not (c.parent / "snapshots" / "broken").exists()
    # a guest that refused to stop still gets `go` (which answers "Not stopped": fine)
    make_cow(c, base, RUNS)
    client = RecordingClient(fail={"stop"})
    with pytest.raises(MconsoleError, match="stop failed"):
        snapshot.take(c, client, "again")
    assert client.commands == ["stop", "go"]


def test_snapshot_names_and_restore_checks(pair: tuple[Path, Path]) -> None:
    c, base = pair
    for bad in ("", ".hidden", "a/b", "x" * 65, "sp ace"):
        with pytest.raises(SnapshotError, match="snapshot name"):
            snapshot.take(c, RecordingClient(), bad)
    snapshot.take(c, RecordingClient(), "s1")
    with locked_by_child(c, write=True), pytest.raises(InUse):
        snapshot.restore(c, "s1")
    os.utime(base, (5, 5))  # the base image changed: the snapshot no longer fits it
    with pytest.raises(BackingMismatch):
        snapshot.restore(c, "s1")


# --- diff: bad input (real diffs need a guest: test_disk_kernel.py) -----------------------


def test_diff_refuses_what_is_not_ext4(pair: tuple[Path, Path]) -> None:
    from warden.disk.diff import diff

    c, _ = pair
    with pytest.raises(DiffError, match="not an ext2/3/4 file system"):
        diff(c)
