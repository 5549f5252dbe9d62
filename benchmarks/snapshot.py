"""Claim: a snapshot of a running guest pauses it for a time that does not grow with the data
it wrote (issue 19), where WARDEN_HOME's file system can share blocks between files.

Ours: `warden disk snapshot MACHINE NAME` on one running minimal guest (128M), after the guest
wrote 16, 64 and 192 MiB of random data to its disk (dd, then sync: the data is in its COW
file). The pause is the snapshot's own `paused_seconds`: from the mconsole `stop` to the `go`
after the COW file's data extents were copied (warden.disk.snapshot.take). Measured twice in
one run: with WARDEN_HOME on this host's ext4 (/tmp), and on XFS (a loop-mounted file system
made for the purpose), where the kernel's copy_file_range clones extents instead of copying
bytes (reflink, XFS's default since xfsprogs 5.1).

Reported for each file system: how much the pause grows per 100 MiB written (from 16 to 192
MiB), and the pause at 16 MiB in the claim; the XFS row's anchor is the same growth on ext4
(a plain copy, measured in the same run). Goal: <= 1 ms per 100 MiB, a pause that does not
grow with the data. (A ratio of the two pauses is no measure on XFS: both are ~1 ms, mostly
two mconsole round trips, and vary by more than they differ.) Without mkfs.xfs (package
xfsprogs), the XFS half says so and only ext4 is reported.
"""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import result
from tests.support.daemon import DaemonProc
from tests.support.netlab import guest_sh, wait_running
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

STEPS_MIB = (16, 64, 192)  # cumulative; the minimal image's disk is 256 MiB
ROUNDS = int(os.environ.get("SNAPSHOT_ROUNDS", "3"))
FLEET = (
    '[[owner]]\nname = "bench"\n'
    '[[machine]]\nname = "s1"\nowner = "bench"\nmemory = "128M"\nimage = "minimal"\n'
)


@contextlib.contextmanager
def xfs_home() -> Iterator[Path | None]:
    """A fresh XFS file system on a loop device, mounted on a temporary directory."""
    if shutil.which("mkfs.xfs") is None:
        print("xfs: mkfs.xfs not found (Debian package xfsprogs): ext4 only")
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="wb-snap-xfs-", dir="/tmp"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(4 << 30)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def pauses(home: Path, label: str) -> dict[int, float]:
    """The median pause (seconds) of ROUNDS snapshots at each step of STEPS_MIB."""
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    out: dict[int, float] = {}
    try:
        d.apply(FLEET)
        wait_running(d, "s1", timeout=300)
        written = 0
        for step in STEPS_MIB:
            more = step - written
            guest_sh(
                d, "s1", f"dd if=/dev/urandom of=/root/fill{step} bs=1M count={more} && sync", 300
            )
            written = step
            for r in range(ROUNDS):
                d.cli("disk", "snapshot", "s1", "--name", f"w{step}-{r}")
            rows = json.loads(d.cli("disk", "snapshots", "s1", "--json").stdout)
            taken = sorted(
                float(s["paused_seconds"]) for s in rows if s["name"].startswith(f"w{step}-")
            )
            out[step] = taken[len(taken) // 2]
            cow = d.layout.machine("s1") / "disk.cow"
            print(
                f"{label}: {step} MiB written (COW holds {cow.stat().st_blocks * 512 >> 20} MiB): "
                f"pauses {', '.join(f'{t * 1e3:.1f}' for t in taken)} ms",
                flush=True,
            )
    finally:
        d.close()
    return out


def growth(p: dict[int, float]) -> float:
    """How much the pause grows per 100 MiB written, in ms (from the first step to the last)."""
    small, big = p[STEPS_MIB[0]], p[STEPS_MIB[-1]]
    return (big - small) * 1e3 / (STEPS_MIB[-1] - STEPS_MIB[0]) * 100


def report(label: str, p: dict[int, float], anchor: dict[int, float] | None) -> None:
    """One RESULT; `anchor`: the plain copy's figures (ext4) that the XFS row is set against."""
    ours = growth(p)
    result(
        f"snapshot pause growth per 100 MiB written ({label}; "
        f"{p[STEPS_MIB[0]] * 1e3:.1f} ms at {STEPS_MIB[0]} MiB)",
        round(ours, 2),
        round(growth(anchor), 2) if anchor else None,
        "<= 1 ms per 100 MiB (the pause does not grow with the data)",
        "ms",
        anchor_name="the same on ext4 (a plain copy)" if anchor else "",
        ok=ours <= 1.0,
    )


def main() -> None:
    t0 = time.monotonic()
    ext4 = Path(tempfile.mkdtemp(prefix="wb-snap-", dir="/tmp"))
    try:
        on_ext4 = pauses(ext4, "ext4")
    finally:
        shutil.rmtree(ext4, ignore_errors=True)
    on_xfs: dict[int, float] = {}
    with xfs_home() as xfs:
        if xfs is not None:
            on_xfs = pauses(xfs, "xfs")
    print(f"took {time.monotonic() - t0:.0f} s")
    for step in STEPS_MIB:
        row = f"{step:4} MiB written: ext4 {on_ext4[step] * 1e3:8.1f} ms"
        if on_xfs:
            row += f"   xfs {on_xfs[step] * 1e3:8.1f} ms"
        print(row)
    report("ext4", on_ext4, None)
    if on_xfs:
        report("xfs, reflink", on_xfs, on_ext4)


if __name__ == "__main__":
    main()
