"""Claim: `warden disk merge` is no slower than Debian's uml_moo.

Setup: a 1 GiB ext4 image made with `mkfs.ext4 -d` from the minimal image's tree, booted as
ubd0 by a real guest (tests/support/rawboot.py) that writes 200 MB of random data with dd
(conv=fsync) and remounts its root read-only, so the COW file holds what a busy guest leaves.
Then, in the same run, `uml_moo COW OUT` and warden's merge (which fsyncs its output; uml_moo
does not) each make the merged image RUNS times, taking turns at going first so that neither
always finds the caches warmed by the other; the outputs must be byte-identical. Reported: the
median seconds of each.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, result
from warden.disk.merge import merge
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress
from warden.uml import cow

RUNS = 5
IMAGE_SIZE = "1G"
WRITE_MB = 200


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def build_base(work: Path) -> Path:
    images = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    images.ensure()
    small = minimal.build(ImageStore(images), NullProgress())
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump / {tree}", str(small)], check=True, capture_output=True
    )
    base = work / "base.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", "bench", "-d", str(tree), str(base), IMAGE_SIZE], check=True
    )
    shutil.rmtree(tree)
    return base


def write_through_guest(work: Path, base: Path) -> Path:
    from tests.support.rawboot import RawGuest  # importable once _common has set sys.path

    home = layout(work / "home")
    home.ensure()
    c = work / "disk.cow"
    with RawGuest(home, base, c, memory=128 << 20) as g:
        g.wait_prompt()
        t0 = time.monotonic()
        out = g.run(
            f"dd if=/dev/urandom of=/data bs=1M count={WRITE_MB} conv=fsync 2>&1 | tail -1; "
            "sync; mount -o remount,ro / && echo settled",
            timeout=600,
        )
        print(f"guest wrote {WRITE_MB} MB in {time.monotonic() - t0:.1f}s: {out.strip()}")
        if "settled" not in out:
            raise RuntimeError(f"the guest did not finish writing: {out}")
    return c


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    try:
        base = build_base(work)
        c = write_through_guest(work, base)
        written = cow.open_cow(c, base.stat().st_size).written() * 512
        print(
            f"base {base.stat().st_size >> 20} MiB ({base.stat().st_blocks >> 11} MiB on disk), "
            f"COW {c.stat().st_blocks >> 11} MiB on disk, {written >> 20} MiB written"
        )
        ours_t: list[float] = []
        moo_t: list[float] = []
        digests: set[str] = set()
        for i in range(RUNS):
            out_moo, out_ours = work / f"moo{i}.img", work / f"ours{i}.img"

            def run_moo(target: Path = out_moo) -> None:
                t0 = time.monotonic()
                subprocess.run(["uml_moo", str(c), str(target)], check=True, capture_output=True)
                moo_t.append(time.monotonic() - t0)

            def run_ours(target: Path = out_ours) -> None:
                t0 = time.monotonic()
                merge(c, target)
                ours_t.append(time.monotonic() - t0)

            for step in (run_moo, run_ours) if i % 2 == 0 else (run_ours, run_moo):
                step()
            print(
                f"run {i}: uml_moo {moo_t[-1]:.2f}s ({out_moo.stat().st_blocks >> 11} MiB on "
                f"disk), warden {ours_t[-1]:.2f}s ({out_ours.stat().st_blocks >> 11} MiB on disk)"
            )
            if i == 0:
                digests = {sha(out_moo), sha(out_ours)}
                print(f"outputs identical: {len(digests) == 1}")
            out_moo.unlink()
            out_ours.unlink()
        ours, moo = median(ours_t), median(moo_t)
        identical = len(digests) == 1
        result(
            claim=f"merge of a 1 GiB image with {WRITE_MB} MB written by a guest",
            ours=ours,
            anchor=moo,
            anchor_name="uml_moo",
            goal="no slower than uml_moo (ratio <= 1), byte-identical output",
            unit="s",
            ok=identical and ours <= moo,
        )
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
