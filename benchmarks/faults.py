"""Claim: faults lose no guest and no logged byte (issue 18, section 3): the fault campaign.

The same harness the test suite runs (tests/support/faults.py), at full size by default
(`FAULTS=short` for the suite's size): kill -9 of the daemon at 50 random points during start,
stop, apply, snapshot and merge; a WARDEN_HOME on a tmpfs that fills up; the daemon stopped
(SIGSTOP) for 30 s; one guest flooding its console, 100,000 USER_NOTIFY datagrams, its tty log
and its disguise (honeypot kernel, when the shared cache has it) while a second guest is
consoled, balanced and logged. Each fault runs on a home of its own. What each fault does, how
it is injected and what it found: docs/decisions/2026-12-07-fault-campaign.md.

Rows: faults injected; guests lost, in a wrong state, disks corrupted, logs failing verify
(goal 0 each); logged bytes lost against bytes printed (goal 0); the quiet guest's console
echo p99 during the flood against the same console before it (goal <= 50 ms); the daemon's
peak RSS against its RSS before the flood, and warden.db growth (goal: the bounds in
tests/support/faults.py, a fixed amount whatever the number of datagrams). FAULTS_SEED
replays a kill campaign; FAULTS_KEEP=1 keeps the homes.
"""

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import drop_home, result  # first: puts the repository root on sys.path

# isort: split
from tests.support import faults
from tests.support.daemon import DaemonProc
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import Layout, layout
from warden.progress import NullProgress

os.environ.setdefault("FAULTS", "full")


def say(text: str) -> None:
    print(text, flush=True)


def on_new_home(run: Callable[[DaemonProc, Path], faults.Tally]) -> faults.Tally:
    """`run(daemon, work)` on a fresh home of its own, removed after (FAULTS_KEEP keeps it)."""
    home = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    work = home / "work"
    work.mkdir()
    d = DaemonProc(lay).start()
    try:
        return run(d, work)
    finally:
        d.close()
        drop_home(home, "FAULTS_KEEP")


def full_home(size: faults.Size, image: Path) -> faults.Tally:
    work = Path(tempfile.mkdtemp(prefix="wfw-", dir="/tmp"))
    try:
        with faults.small_home(64) as lay:
            d = DaemonProc(lay).start()
            try:
                return faults.home_fills_up(d, size, work, say, image=str(image))
            finally:
                d.close()
    finally:
        drop_home(work, "FAULTS_KEEP")


def shared_image() -> Path:
    """The minimal image in a home of its own on the ordinary disk (the tmpfs home names it
    by path: a copy would take the room the test fills)."""
    lay: Layout = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    return minimal.build(ImageStore(lay), NullProgress())


def main() -> int:
    size = faults.size_from_env()
    say(f"fault campaign, {size.name} size: {size}")
    total = faults.Tally()
    steps: list[tuple[str, Callable[[], faults.Tally]]] = [
        (
            "kill -9 during operations",
            lambda: on_new_home(lambda d, w: faults.kill_campaign(d, size, w, say)),
        ),
        ("WARDEN_HOME fills up", lambda: full_home(size, shared_image())),
        (
            "daemon stopped",
            lambda: on_new_home(lambda d, w: faults.daemon_stopped(d, size, w, say)),
        ),
        (
            "one guest floods every channel",
            lambda: on_new_home(lambda d, w: faults.channel_flood(d, size, w, say)),
        ),
    ]
    for title, step in steps:
        say(f"== {title}")
        tally = step()
        say(tally.report())
        total.absorb(tally)
    f = total.figures
    injected = sum(total.faults.values())
    expected = size.kill_points + 3
    result(
        "fault campaign: faults injected",
        float(injected),
        None,
        f"{size.kill_points} kill -9 + full home + {size.sigstop_seconds:g}s SIGSTOP + flood",
        "faults",
        ok=injected == expected,
    )
    for claim, items in (
        ("fault campaign: guests lost", total.lost),
        ("fault campaign: guests in a wrong state", total.wrong),
        ("fault campaign: disks corrupted", total.corrupt),
        ("fault campaign: logs failing verify (not a cut)", total.logs_failed),
        ("fault campaign: files left behind by a fault", total.debris),
    ):
        result(claim, float(len(items)), None, "0", "findings", ok=not items)
    result(
        "fault campaign: logged bytes lost",
        float(total.unlogged),
        float(total.printed),
        "0",
        "bytes",
        anchor_name="bytes the guests printed",
        ok=total.unlogged == 0,
    )
    p99 = f["flood: qt echo p99 ms"]
    result(
        "flood: quiet guest's console echo p99",
        p99,
        f["flood: qt echo p99 ms before the flood"],
        f"<= {faults.ECHO_P99_GOAL_MS:g} ms",
        "ms",
        anchor_name="same console before the flood",
        ok=p99 <= faults.ECHO_P99_GOAL_MS,
    )
    n = int(f["flood: notify datagrams written"])
    rss_before = f["flood: daemon RSS before, MiB"]
    result(
        f"flood: daemon peak RSS during {n} notify datagrams",
        f["flood: daemon peak RSS (VmHWM), MiB"],
        rss_before,
        f"<= before + {faults.RSS_GROWTH_BOUND >> 20} MiB",
        "MiB",
        anchor_name="its RSS before the flood",
        ok=f["flood: daemon peak RSS (VmHWM), MiB"] - rss_before <= faults.RSS_GROWTH_BOUND >> 20,
    )
    growth = f["flood: warden.db growth, KiB"]
    result(
        f"flood: warden.db growth during {n} notify datagrams",
        growth,
        None,
        f"<= {faults.DB_GROWTH_BOUND >> 10} KiB whatever the count",
        "KiB",
        ok=growth <= faults.DB_GROWTH_BOUND >> 10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
