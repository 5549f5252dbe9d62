"""Issue 18, section 1: a COW header is guest-written and never trusted.

A jailed guest's kernel writes its own disk.cow, header included. These tests craft headers as
such a guest could (a huge size, the path of another host file with matching size and mtime, a
cut header) and check that warden reads only the header before it has chosen the backing file,
bounds the bitmap by that file's real size, never writes to any file but the recorded image,
and names both values when it refuses. The last test does it to a real jailed guest's disk.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from tests.test_disk_ops import make_base, make_cow
from tests.test_jail import run_on, wait_state
from warden.cli.main import main
from warden.disk import backing, inspect, merge, rebase, snapshot
from warden.disk.errors import BackingMismatch, DiskError
from warden.store import MachineRow, Store
from warden.uml import cow
from warden.uml.cow import CowFormatError

MiB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def forge(
    cow_path: Path, *, backing: Path, size: int | None = None, mtime: int | None = None
) -> None:
    """Rewrite the header as a guest could: another backing path, size or mtime."""
    with open(cow_path, "rb") as f:
        h = cow.parse_header(f.read(cow.HEADER_READ))
    new = dataclasses.replace(
        h,
        backing=os.fsencode(backing),
        size=h.size if size is None else size,
        mtime=h.mtime if mtime is None else mtime,
    )
    fd = os.open(cow_path, os.O_WRONLY)
    try:
        os.pwrite(fd, cow.encode_header(new), 0)
    finally:
        os.close(fd)


def twin(base: Path, other: Path) -> None:
    """`other`: same size and mtime as `base`, other content (what a guest would look for)."""
    make_base(other, base.stat().st_size, seed=99)
    st = base.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))


def peak_bytes(fn: Callable[[], Any]) -> tuple[int, BaseException | None]:
    """Peak Python allocation while `fn` runs (bytes read from a file are allocations)."""
    tracemalloc.start()
    err: BaseException | None = None
    try:
        fn()
    except Exception as e:
        err = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, err


# ---- the codec: headers as a guest could write them ------------------------------------------
@pytest.fixture
def huge(tmp_path: Path) -> tuple[Path, Path]:
    """A COW file over a 1 MiB base whose header claims a 1 TiB backing file. The file is long
    enough (sparse) for the 256 MiB bitmap such a size implies, as a guest's own COW file is."""
    base = tmp_path / "base.img"
    make_base(base, MiB)
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(0, 8)])
    forge(c, backing=base, size=1 << 40)
    h = dataclasses.replace(cow.new_header(b"/x", 0, 1 << 40))
    os.truncate(c, h.bitmap_offset + h.bitmap_len + MiB)
    return c, base


def test_a_huge_size_reads_no_bitmap(huge: tuple[Path, Path], tmp_path: Path) -> None:
    c, base = huge
    out = tmp_path / "out.img"
    for what, fn in [
        ("merge", lambda: merge.merge(c, out)),
        ("merge in place", lambda: merge.merge_in_place(c)),
        ("inspect", lambda: inspect.inspect(c)),
        ("open_cow", lambda: cow.open_cow(c, MiB)),
    ]:
        peak, err = peak_bytes(fn)
        assert peak < 4 * MiB, f"{what}: {peak} bytes allocated"
        if what != "inspect":
            assert isinstance(err, CowFormatError | BackingMismatch), (what, err)
            assert str(1 << 40) in str(err) and str(MiB) in str(err), (what, err)
    assert inspect.inspect(c).sectors_written is None
    assert not out.exists()


def test_read_header_reads_only_the_header(huge: tuple[Path, Path]) -> None:
    c, _ = huge
    peak, err = peak_bytes(lambda: cow.read_header(c))
    assert err is None and peak < 64 << 10
    h, length = cow.read_header(c)
    assert h.size == 1 << 40 and length == c.stat().st_size


@pytest.mark.parametrize("cut", [8, 100, 4000, 4127])
def test_a_cut_header_is_refused_naming_the_file(tmp_path: Path, cut: int) -> None:
    base = tmp_path / "base.img"
    make_base(base, MiB)
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(0, 8)])
    os.truncate(c, cut)
    for fn in (lambda: cow.read_header(c), lambda: backing.check(c), lambda: inspect.inspect(c)):
        with pytest.raises(CowFormatError, match=f"{c}: .*(truncated header|no terminating NUL)"):
            fn()


def test_a_path_without_its_nul_is_refused(tmp_path: Path) -> None:
    h = cow.new_header(b"/base.img", 5, MiB)
    raw = bytearray(cow.encode_header(h))
    raw[32:] = b"a" * (len(raw) - 32)  # the path fills its whole field: no terminating NUL
    with pytest.raises(CowFormatError, match="no terminating NUL"):
        cow.parse_header(bytes(raw), "x.cow")


# ---- bare paths: the header must name what the user named -----------------------------------
def test_a_header_naming_another_file_than_the_one_named_is_refused(tmp_path: Path) -> None:
    base, other = tmp_path / "base.img", tmp_path / "other.img"
    make_base(base, MiB)
    twin(base, other)
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(0, 8), (100, 4)])
    forge(c, backing=other)
    before = {p: (sha(p), p.stat().st_mtime_ns) for p in (base, other)}
    out = tmp_path / "out.img"
    for fn in (
        lambda: merge.merge(c, out, backing_path=base),
        lambda: merge.merge_in_place(c, backing_path=base),
    ):
        with pytest.raises(BackingMismatch) as e:
            fn()
        assert f"names '{other}'" in str(e.value) and f"you named {base}" in str(e.value)
    assert not out.exists()
    assert {p: (sha(p), p.stat().st_mtime_ns) for p in (base, other)} == before
    # The same file by another name (a link) is the same file.
    link = tmp_path / "link.img"
    link.symlink_to(other)
    merge.merge(c, out, backing_path=link)


# ---- a machine's disk: only the recorded base, whatever the header says ----------------------
@pytest.fixture
def machine_home(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A WARDEN_HOME whose machine m1 has a disk over base.img (recorded in warden.db), and a
    twin of that base elsewhere: (disk, base, twin)."""
    home = tmp_path / "home"
    disk_dir = home / "machines" / "m1"
    disk_dir.mkdir(parents=True)
    images = tmp_path / "images"
    images.mkdir()
    base, other = images / "base.img", tmp_path / "other.img"
    make_base(base, MiB)
    twin(base, other)
    disk = disk_dir / "disk.cow"
    make_cow(disk, base, [(0, 8), (300, 16)])
    store = Store(home / "warden.db")
    store.put_machine(
        MachineRow("m1", "stopped", "stopped", None, None, 1, None, str(base), None, None)
    )
    store.close()
    return disk, base, other


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["disk", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_merge_in_place_writes_only_the_recorded_base(
    machine_home: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    disk, base, other = machine_home
    forge(disk, backing=other)  # same size and mtime: the kernel's own check would pass
    other_before = (sha(other), other.stat().st_mtime_ns)
    base_before = sha(base)
    code, out, err = cli(capsys, "inspect", str(disk))
    assert code == 0 and f"recorded     {base} (machine m1" in out and str(other) in out
    code, out, err = cli(capsys, "merge", str(disk), "--in-place")
    assert code == 0, err
    assert (sha(other), other.stat().st_mtime_ns) == other_before
    assert sha(base) != base_before
    # naming the twin does not help either
    code, _, err = cli(capsys, "merge", str(disk), "--in-place", "--backing", str(other))
    assert code == 2 and "machine 'm1'" in err and str(other) in err and str(base) in err
    assert (sha(other), other.stat().st_mtime_ns) == other_before


def test_a_forged_size_or_mtime_is_refused_naming_both_files(
    machine_home: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    disk, base, _ = machine_home
    bigger = tmp_path / "bigger.img"
    make_base(bigger, 2 * MiB)
    forge(disk, backing=bigger, size=2 * MiB, mtime=int(bigger.stat().st_mtime))
    before = {p: (sha(p), p.stat().st_mtime_ns) for p in (base, bigger)}
    for argv in (
        ["merge", str(disk), "--in-place"],
        ["merge", str(disk), str(tmp_path / "o.img")],
        ["diff", "--cow", str(disk)],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert f"names '{bigger}'" in err and f"machine 'm1' is {base}" in err, err
        assert "warden reset m1" in err and "Traceback" not in err
    assert {p: (sha(p), p.stat().st_mtime_ns) for p in (base, bigger)} == before
    assert not (tmp_path / "o.img").exists()
    # A rebase may only point it back at the recorded base (here impossible: sizes differ).
    code, _, err = cli(capsys, "rebase", str(disk), "--backing", str(bigger))
    assert code == 2 and "refusing to point it at" in err
    code, _, err = cli(capsys, "rebase", str(disk), "--backing", str(base))
    assert code == 2 and f"{base} is {MiB} bytes" in err


def test_a_forged_mtime_can_be_repaired_by_rebase(
    machine_home: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    disk, base, other = machine_home
    forge(disk, backing=other, mtime=12345)
    code, _, err = cli(capsys, "merge", str(disk), "--in-place")
    assert code == 2 and "ignore-mtime" in err and f"rebase {disk} --backing {base}" in err
    code, _, err = cli(capsys, "rebase", str(disk), "--backing", str(base), "--ignore-mtime")
    assert code == 0, err
    h, _ = cow.read_header(disk)
    assert h.backing == os.fsencode(base) and h.mtime == int(base.stat().st_mtime)


def test_snapshots_of_a_machine_disk_use_the_recorded_base(
    machine_home: tuple[Path, Path, Path],
) -> None:
    disk, base, other = machine_home
    snap_dir = disk.parent / "snapshots" / "s1"
    snap_dir.mkdir(parents=True)
    shutil.copy2(disk, snap_dir / "disk.cow")
    forge(snap_dir / "disk.cow", backing=other)
    from warden.disk import recorded

    found = recorded.lookup(snap_dir / "disk.cow")
    assert found == backing.Recorded("m1", base)
    assert recorded.lookup(disk) == found
    c, path = backing.check(snap_dir / "disk.cow", None, found)
    assert path == base and c.written() == 24


def test_a_machine_disk_without_a_recorded_base_is_refused(
    machine_home: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    disk, _, _ = machine_home
    store = Store(disk.parents[2] / "warden.db")
    store.delete_machine("m1")
    store.close()
    code, _, err = cli(capsys, "merge", str(disk), "--in-place")
    assert code == 2 and "no base image recorded" in err and "warden reset m1" in err


def test_name_backing_rewrites_the_path_only(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    make_base(base, MiB)
    c = tmp_path / "disk.cow"
    make_cow(c, base, [(0, 8)])
    forge(c, backing=Path("/some/where/else/much/longer/than/before.img"))
    raw_before = c.read_bytes()
    h0, _ = cow.read_header(c)
    assert rebase.name_backing(c, b"/disk/base") == h0.backing
    h1, _ = cow.read_header(c)
    assert h1 == dataclasses.replace(h0, backing=b"/disk/base")
    raw_after = c.read_bytes()
    changed = [i for i in range(len(raw_before)) if raw_before[i] != raw_after[i]]
    assert 32 <= changed[0] and changed[-1] < 32 + len(h0.backing) + 1  # the path field only
    assert rebase.name_backing(c, b"/disk/base") is None


def test_bad_snapshot_names_are_refused_in_full() -> None:
    with pytest.raises(DiskError, match="snapshot name"):
        snapshot.check_name("ok\n")
    assert snapshot.check_name("ok") == "ok"


# ---- a real jailed guest ---------------------------------------------------------------------
@pytest.mark.guest
def test_a_jailed_guest_rewritten_header_never_chooses_the_base(daemon: DaemonProc) -> None:
    """The header of a stopped jailed guest's disk is rewritten as its kernel could have done:
    to name another host file of the same size and mtime, the guest still boots on the base
    warden recorded (the path is put back, and an event says so); with another size, the start
    is refused naming both files; `disk merge --in-place` writes only into the recorded base."""
    images = daemon.layout.home / "own-images"
    images.mkdir()
    image = images / "base.img"
    minimal = daemon.layout.images / "minimal.img"
    subprocess.run(["cp", "--sparse=always", "-p", str(minimal), str(image)], check=True)
    os.chmod(image, 0o644)
    other, big = images / "other.img", images / "big.img"
    with open(other, "wb") as f:
        f.truncate(image.stat().st_size)  # zeros: no file system at all
    st = image.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(big, "wb") as f:
        f.truncate(st.st_size + MiB)
    untouched = {p: (sha(p), p.stat().st_mtime_ns) for p in (other, big)}

    daemon.apply(FLEET_HEAD + machine_toml("hd", image=str(image)))
    wait_state(daemon, "hd", "running")
    run_on(daemon, "hd", "echo kept > /root/kept; sync")
    daemon.cli("stop", "hd")
    disk = daemon.layout.machine("hd") / "disk.cow"

    forge(disk, backing=other)
    r = daemon.cli("start", "hd", check=False)
    assert r.returncode == 0, r.stderr
    assert run_on(daemon, "hd", "cat /root/kept").strip() == "kept"
    events = json.loads(daemon.cli("events", "hd", "--json").stdout)
    repaired = [e for e in events if e["kind"] == "cow-header-repaired"]
    assert repaired and str(other) in json.dumps(repaired[-1]), events
    assert cow.read_header(disk)[0].backing == b"/disk/base"  # the name the jail gives it
    daemon.cli("stop", "hd")

    forge(disk, backing=big, size=big.stat().st_size, mtime=int(big.stat().st_mtime))
    r = daemon.cli("start", "hd", check=False)
    assert r.returncode != 0
    assert str(big) in r.stderr and str(image) in r.stderr and "warden reset hd" in r.stderr
    info = daemon.ls()["hd"]
    assert info["state"] == "crashed" and info["pid"] is None

    forge(disk, backing=other, size=st.st_size, mtime=int(st.st_mtime))
    before = sha(image)
    r = daemon.cli("disk", "merge", str(disk), "--in-place", check=False)
    assert r.returncode == 0, r.stderr
    assert sha(image) != before
    assert {p: (sha(p), p.stat().st_mtime_ns) for p in (other, big)} == untouched
