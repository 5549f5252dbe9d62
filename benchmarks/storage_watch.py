"""Claim: the storage watch costs almost nothing while WARDEN_HOME has plenty of space.

One reading is what StorageFeature._run does each time: a hop to the executor for a statvfs
of the home and a stat of each live guest's COW file, then Watch.step. Measured here with 16
sparse COW files in a scratch directory, timed by process CPU time over many readings, and
turned into a share of one core at the idle interval (policy.SLOW, 2 s) and at the low-space
interval (policy.FAST, 0.25 s). Anchor: 1% of a core, the budget we allow a watch at idle.
"""

import asyncio
import os
import tempfile
import time
from pathlib import Path

from _common import result  # first: puts the repository root on sys.path
from warden.storage.feature import allocated
from warden.storage.policy import FAST, SLOW, Reading, Watch

GUESTS = 16
READINGS = 3000


def read(home: Path, cows: dict[str, Path]) -> Reading:
    st = os.statvfs(home)
    sizes = {n: b for n, p in cows.items() if (b := allocated(p)) is not None}
    return Reading(time.monotonic(), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, sizes)


async def readings(home: Path, cows: dict[str, Path], n: int) -> float:
    loop = asyncio.get_running_loop()
    watch = Watch()
    cpu = time.process_time()
    for _ in range(n):
        r = await loop.run_in_executor(None, read, home, cows)
        watch.step(r)
    return (time.process_time() - cpu) / n


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="storage-watch-") as tmp:
        home = Path(tmp)
        cows = {}
        for i in range(GUESTS):
            p = home / f"g{i}.cow"
            with open(p, "wb") as f:
                f.truncate(256 << 20)
                f.write(b"x" * 4096)
            cows[f"g{i}"] = p
        asyncio.run(readings(home, cows, 100))  # warm up the executor
        per = asyncio.run(readings(home, cows, READINGS))
    idle = per / SLOW * 100
    low = per / FAST * 100
    print(f"one reading ({GUESTS} guests): {per * 1e6:.0f} us of CPU")
    print(f"share of a core: {idle:.4f}% at idle (every {SLOW:g} s), {low:.4f}% while low")
    result(
        "storage watch CPU at idle (16 guests)",
        round(idle, 5),
        1.0,
        "<= 1% of a core",
        "% of a core",
        anchor_name="1% of a core",
        ok=idle <= 1.0,
    )


if __name__ == "__main__":
    main()
