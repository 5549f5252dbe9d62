"""COW files with a real UML kernel, both ways: the kernel boots from files warden made (create,
rebase, restore, merge) and warden reads files the kernel wrote (inspect, merge, snapshot, diff).
Merges are compared byte for byte with Debian's uml_moo, and e2fsck checks the result."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.rawboot import RawGuest
from tests.test_disk_ops import sha, uml_moo
from warden.disk import create, inspect, merge, rebase, snapshot
from warden.disk.diff import diff
from warden.disk.errors import InUse
from warden.paths import Layout
from warden.uml import cow, mconsole

pytestmark = pytest.mark.guest

PATTERN = b"warden-cow-test\n"  # 16 bytes; `yes warden-cow-test` prints it over and over


def pattern(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def settle(g: RawGuest) -> None:
    """Make the guest's root file system clean on disk (as a shutdown would) before close()."""
    out = g.run("sync; mount -o remount,ro / && echo settled")
    assert "settled" in out, out


def e2fsck_clean(image: Path) -> None:
    res = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def mconsole_client(g: RawGuest, home: Layout) -> mconsole.Client:
    return mconsole.Client(g.uml_dir / g.name / "mconsole", home.run / f"{g.name}.reply")


# Raw writes to the second disk: (byte offset, length), through O_DIRECT, all sector multiples;
# the last one ends at the disk's last sector (the kernel's bitmap edge case).
DATA_SIZE = 8 << 20
RAW_WRITES = [(3 * 512, 512), (20 * 512, 4096), (4096 * 7, 3 * 4096), (1 << 20, 257 * 1024),
              (DATA_SIZE - 512, 512)]  # fmt: skip


def test_kernel_and_warden_read_each_others_files(home: Layout, minimal_image: Path) -> None:
    d = home.home
    root_cow = d / "root.cow"
    create.create(root_cow, minimal_image)  # warden makes the root disk's COW file ...
    data_img = d / "data.img"
    with open(data_img, "wb") as f:
        f.truncate(DATA_SIZE)
    data_cow = d / "data.cow"  # ... and the kernel makes the data disk's
    with RawGuest(home, minimal_image, root_cow, extra=(f"ubd1={data_cow},{data_img}",)) as g:
        g.wait_prompt()
        out = g.run(
            "mkdir /data && printf x > /data/one && yes warden-cow-test | head -c 4096 > "
            "/data/page && yes warden-cow-test | head -c 1048579 > /data/big && "
            "yes warden-cow-test | dd of=/data/big bs=1 seek=5000 count=3000 conv=notrunc "
            "2>/dev/null && echo '# more' >> /etc/profile && echo files-ok"
        )
        assert "files-ok" in out, out
        for offset, length in RAW_WRITES:
            out = g.run(
                f"yes warden-cow-test | head -c {length} | dd of=/dev/ubdb bs=512 "
                f"seek={offset // 512} iflag=fullblock oflag=direct conv=notrunc 2>&1 | tail -1"
            )
            assert f"{length // 512}+0 records out" in out, out
        settle(g)

    # warden reads what the kernel wrote: the data disk's COW file (made by the kernel)
    made = cow.open_cow(data_cow, DATA_SIZE)
    assert made.header.layout is cow.Layout.V3
    assert made.header.backing == os.fsencode(data_img)
    expected = bytearray(DATA_SIZE)
    for offset, length in RAW_WRITES:
        expected[offset : offset + length] = pattern(length)
    ours, theirs = d / "data-ours.img", d / "data-moo.img"
    merge.merge(data_cow, ours)
    uml_moo(data_cow, theirs)
    assert ours.read_bytes() == bytes(expected)
    assert sha(ours) == sha(theirs)
    written = inspect.inspect(data_cow).sectors_written
    assert written >= sum(length for _, length in RAW_WRITES) // 512

    # ... and the root disk's COW file, which warden made and the kernel wrote into
    i = inspect.inspect(root_cow)
    assert i.backing.ok and i.sectors_written > 2048  # at least the 1 MiB file
    root_ours, root_theirs = d / "root-ours.img", d / "root-moo.img"
    merge.merge(root_cow, root_ours)
    uml_moo(root_cow, root_theirs)
    assert sha(root_ours) == sha(root_theirs)
    e2fsck_clean(root_ours)

    # the kernel boots the merged image (as the base of a new COW file) and finds the files
    with RawGuest(home, root_ours, d / "again.cow") as g:
        g.wait_prompt()
        out = g.run("wc -c /data/one /data/page /data/big; md5sum /data/big; tail -1 /etc/profile")
    assert "1 /data/one" in out and "4096 /data/page" in out and "1048579 /data/big" in out
    big = bytearray(pattern(1048579))
    big[5000:8000] = pattern(3000)
    assert hashlib.md5(bytes(big)).hexdigest() in out  # what md5sum printed
    assert out.rstrip().endswith("# more")


def test_rebase_lets_the_kernel_find_a_moved_base(home: Layout, minimal_image: Path) -> None:
    d = home.home
    base = d / "base.img"
    shutil.copy2(minimal_image, base)  # copy2 keeps the mtime the COW header will record
    c = d / "disk.cow"
    with RawGuest(home, base, c) as g:  # the kernel creates the COW file
        g.wait_prompt()
        g.run("echo survived-the-move > /moved.txt")
        settle(g)
    (d / "elsewhere").mkdir()
    moved = d / "elsewhere" / "renamed.img"
    base.rename(moved)
    assert not inspect.inspect(c).backing.exists
    r = rebase.rebase(c, moved)
    assert r.new.backing == os.fsencode(moved)
    # boot with `ubd0=COW` only: the kernel takes the backing path from the header warden wrote
    with RawGuest(home, moved, c, cow_only=True) as g:
        g.wait_prompt()
        assert "survived-the-move" in g.run("cat /moved.txt")


def test_snapshot_of_a_running_guest_and_restore(home: Layout, minimal_image: Path) -> None:
    d = home.home
    c = d / "disk.cow"
    with RawGuest(home, minimal_image, c) as g:
        g.wait_prompt()
        g.run("echo before > /before.txt; sync")
        # a running kernel holds the COW file: nothing may rewrite it under the guest
        for act in (
            lambda: merge.merge(c, d / "x.img"),
            lambda: rebase.rebase(c, minimal_image),
            lambda: diff(c),
        ):
            with pytest.raises(InUse, match=f"in use by pid {g.pid}"):
                act()
        with pytest.raises(InUse, match=f"in use by pid {g.pid}"):
            merge.merge_in_place(c)
        with mconsole_client(g, home) as client:
            snap = snapshot.take(c, client, "s1")
        assert "alive" in g.run("echo alive")  # `go` resumed it
        with pytest.raises(InUse):
            snapshot.restore(c, "s1")
        g.run("rm /before.txt; echo after > /after.txt")
        settle(g)
    assert [s.name for s in snapshot.list_snapshots(c)] == ["s1"]
    assert snap.paused_seconds < 5 and snap.sectors_written > 0
    # the snapshot is a COW file in its own right: diff it
    created = {ch.path for ch in diff(snap.cow).of_kind("created")}
    assert created == {"/before.txt"}
    snapshot.restore(c, "s1")
    with RawGuest(home, minimal_image, c) as g:
        g.wait_prompt()
        out = g.run("cat /before.txt; ls /after.txt 2>&1")
    assert "before" in out and "No such file" in out


def test_diff_reports_exactly_what_the_guest_changed(home: Layout, minimal_image: Path) -> None:
    c = home.home / "disk.cow"
    create.create(c, minimal_image)
    script = " && ".join(
        [
            "mkdir -p /srv/www/new",
            "printf hello > /srv/www/index.html",
            ": > /srv/empty",
            "yes warden-cow-test | head -c 2097152 > /srv/www/new/blob",
            "ln -s /srv/www /www",
            "ln -s /srv/www/new/" + "x" * 70 + " /srv/long-link",  # a slow symlink (a block)
            "ln /srv/www/index.html /srv/hardlink",
            # a name with a space and a control character (\001, made by the guest's printf)
            "printf x > \"$(printf '/srv/odd name\\001')\"",
            "echo '# appended' >> /etc/profile",  # content and size
            "sed -i s/root/ROOT/ /etc/group",  # a new inode at the same path
            "chmod 600 /etc/fstab",  # mode only
            "touch -d '2001-02-03 04:05:06' /etc/issue",  # mtime only
            "rm /etc/passwd",
            "rm -r /home",
            "mv /mnt /mnt2",
            "echo guest-done",
        ]
    )
    with RawGuest(home, minimal_image, c) as g:
        g.wait_prompt()
        out = g.run(script)
        assert "guest-done" in out, out
        settle(g)
    r = diff(c)
    got = {(ch.kind, ch.path): set(ch.what) for ch in r.changes}
    assert {p for k, p in got if k == "created"} == {
        "/srv",
        "/srv/www",
        "/srv/www/new",
        "/srv/www/index.html",
        "/srv/www/new/blob",
        "/srv/empty",
        "/www",
        "/srv/hardlink",
        "/srv/long-link",
        "/srv/odd name\\x01",
        "/mnt2",
    }
    assert {p for k, p in got if k == "deleted"} == {"/etc/passwd", "/home", "/mnt"}
    modified = {p: w for (k, p), w in got.items() if k == "modified"}
    assert set(modified) == {"/etc/profile", "/etc/group", "/etc/fstab", "/etc/issue"}
    assert {"content", "size"} <= modified["/etc/profile"]
    assert "inode" in modified["/etc/group"]
    assert modified["/etc/fstab"] == {"mode"}
    assert modified["/etc/issue"] == {"mtime"}
    blob = next(ch for ch in r.changes if ch.path == "/srv/www/new/blob")
    assert blob.size == 2097152
    assert blob.sha256 == hashlib.sha256(pattern(2097152)).hexdigest()
    links = {ch.path: ch.target for ch in r.changes if ch.type == "symlink"}
    assert links == {"/www": "/srv/www", "/srv/long-link": "/srv/www/new/" + "x" * 70}
    index = next(ch for ch in r.changes if ch.path == "/srv/www/index.html")
    assert index.sha256 == hashlib.sha256(b"hello").hexdigest()


def test_warden_records_the_backing_path_as_the_kernel_does(
    home: Layout, minimal_image: Path
) -> None:
    d = home.home
    (d / "real").mkdir()
    shutil.copy2(minimal_image, d / "real" / "base.img")
    (d / "link").symlink_to(d / "real")
    given = d / "link" / "base.img"  # a symbolic link in the directory part
    with RawGuest(home, given, d / "kernel.cow") as g:
        g.wait_prompt()
    by_kernel = cow.read_header(d / "kernel.cow")[0]
    by_warden = create.create(d / "warden.cow", given)
    assert by_kernel.backing == by_warden.backing == os.fsencode(d / "real" / "base.img")
    assert (by_kernel.mtime, by_kernel.size) == (by_warden.mtime, by_warden.size)
    assert cow.encode_header(by_warden) == (d / "warden.cow").read_bytes()[: by_warden.header_size]
