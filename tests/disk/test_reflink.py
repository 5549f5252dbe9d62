"""A snapshot's copy clones blocks where the file system can (XFS), and copies them where it
cannot (ext4): on real, loop-mounted file systems of each kind."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from warden.disk import hostfile


@pytest.fixture(params=["xfs", "ext4"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    kind = request.param
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 << 20)  # XFS wants 300 MiB at least
    subprocess.run([f"mkfs.{kind}", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield kind, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def test_copy_range_shares_blocks_exactly_where_can_reflink_says(fs: tuple[str, Path]) -> None:
    kind, mnt = fs
    assert hostfile.can_reflink(mnt) is (kind == "xfs")
    assert [p.name for p in mnt.iterdir() if "reflink" in p.name] == []  # the probe cleans up
    src = mnt / "cow"
    src.write_bytes(os.urandom(1 << 20) * 32)  # 32 MiB
    os.sync()
    before = free(mnt)
    s = os.open(src, os.O_RDONLY)
    d = os.open(mnt / "copy", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert hostfile.copy_range(s, 0, d, 0, 32 << 20) == 32 << 20
        os.fsync(d)
    finally:
        os.close(s)
        os.close(d)
    assert (mnt / "copy").read_bytes() == src.read_bytes()
    used = before - free(mnt)
    if kind == "xfs":
        assert used < 4 << 20, f"XFS: the copy took {used >> 20} MiB: blocks were not shared"
    else:
        assert used >= 32 << 20, f"ext4: the copy took {used >> 20} MiB"
