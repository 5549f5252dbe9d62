"""Claim: `warden kill` is instant and complete.

Ours: a jailed guest through the daemon, running 20 processes of its own (each a host process:
UML gives every guest address space one); from the kill request (the API call `warden kill`
makes) to the moment the guest's cgroup holds no process. Anchor: the same kernel booted by
hand (no cgroup.kill, no pid namespace), killed the plain way, SIGKILL to the kernel process:
the time until that process is reaped, and how many of the guest's processes it leaves behind
(counted 1 s later; the benchmark then kills them through their cgroup). N runs of each,
alternating; medians compared. Goal: ours <= 50 ms median, and 0 processes left.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, result  # first: puts the repository root on sys.path

# isort: split
from tests.support.daemon import WARDEN, DaemonProc
from tests.support.rawboot import RawGuest
from warden.api.client import ApiClient
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

N = int(os.environ.get("KILL_RUNS", "10"))
PROCS = 20
FLEET = """
[[owner]]
name = "bench"
[[machine]]
name = "k1"
owner = "bench"
memory = "64M"
autostart = false
"""
START_PROCS = f"for i in $(seq {PROCS}); do sleep 1000 & done; echo started-$((3*5))\n"


def group_pids(group: Path) -> list[str]:
    try:
        return (group / "cgroup.procs").read_text().split()
    except (FileNotFoundError, OSError):  # ENODEV: the daemon is removing the group
        return []


def processes_of_uid(uid: int) -> tuple[int, int]:
    """(live processes, zombies) of `uid` on the host. A zombie has exited: it runs nothing and
    holds no memory, only its pid until its parent reaps it (for a guest's processes, the
    pid namespace's teardown), so it is counted apart."""
    live = zombies = 0
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                status = Path(f"/proc/{e.name}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^Uid:\s+(\d+)", status, re.M)
            if m and int(m.group(1)) == uid:
                if re.search(r"^State:\s+Z", status, re.M):
                    zombies += 1
                else:
                    live += 1
    return live, zombies


def warden_kill(
    d: DaemonProc, api: ApiClient, cli: bool = False
) -> tuple[float, int, tuple[int, int]]:
    """(ms from the kill request to an empty cgroup, host processes the guest had, (live
    processes, zombies) of its uid anywhere on the host afterwards). cli: through a `warden
    kill` process."""
    api.post("/machines/k1/start", {"wait": True})
    out = d.console("k1", START_PROCS, timeout=1.0)
    assert "started-15" in out, out[-500:]
    group = Path(f"/sys/fs/cgroup/unified/warden-{d.layout.instance}/k1")
    deadline = time.monotonic() + 10
    while len(group_pids(group)) < PROCS + 1:
        assert time.monotonic() < deadline, group_pids(group)
        time.sleep(0.05)
    before = len(group_pids(group))
    uid = api.get("/machines/k1/jail")["uid"]
    t0 = time.perf_counter()
    if cli:
        subprocess.Popen([*WARDEN, "kill", "--no-wait", "k1"], env=d.env)
    else:
        api.post("/machines/k1/kill", {"wait": False})
    while group_pids(group):
        pass
    took = (time.perf_counter() - t0) * 1000
    left = processes_of_uid(uid)
    deadline = time.monotonic() + 30
    while d.ls()["k1"]["state"] not in ("stopped", "crashed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return took, before, left


def plain_sigkill(lay: object, image: Path, cow: Path) -> tuple[float, int, int]:
    """(ms until the kernel process is reaped, guest processes before, orphans left)."""
    cow.unlink(missing_ok=True)
    with RawGuest(lay, image, cow) as g:  # type: ignore[arg-type]
        g.wait_prompt(60)
        g.send(START_PROCS.encode())
        g.expect(re.compile(rb"started-15"), 30)
        deadline = time.monotonic() + 10
        while len(g.cg.pids()) < PROCS + 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = len(g.cg.pids())
        assert g.proc is not None
        t0 = time.perf_counter()
        os.kill(g.pid, signal.SIGKILL)
        g.proc.wait()
        took = (time.perf_counter() - t0) * 1000
        time.sleep(1.0)
        left = len(g.cg.pids())
    return took, before, left  # RawGuest.close() killed the orphans through the cgroup


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="wk-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    api = ApiClient(lay)
    ours: list[float] = []
    anchor: list[float] = []
    orphans: list[int] = []
    procs: list[int] = []
    try:
        d.apply(FLEET)
        left_ours = zombies_ours = 0
        for i in range(N):
            took, before, (left_uid, zombies) = warden_kill(d, api)
            ours.append(took)
            procs.append(before)
            left_ours += left_uid
            zombies_ours += zombies
            a_took, a_before, left = plain_sigkill(lay, image, home / "raw.cow")
            anchor.append(a_took)
            orphans.append(left)
            print(
                f"run {i + 1}: warden kill {took:6.1f} ms ({before} processes, {left_uid} left, "
                f"{zombies} zombies) | "
                f"SIGKILL kernel {a_took:6.1f} ms ({a_before} processes, {left} left)",
                flush=True,
            )
        cli_took, _, (cli_left, cli_zombies) = warden_kill(d, api, cli=True)
        left_ours += cli_left
        zombies_ours += cli_zombies
        print(
            f"the same through the `warden kill --no-wait` command (a new Python process): "
            f"{cli_took:.0f} ms, most of it that process starting",
            flush=True,
        )
    finally:
        d.close()
        d.assert_clean()
        shutil.rmtree(home, ignore_errors=True)
    med, amed = median(ours), median(anchor)
    print(
        f"warden kill: median {med:.1f} ms, max {max(ours):.1f} ms, {left_ours} live processes "
        f"of the guest's uid left on the host (and {zombies_ours} zombies not yet reaped); "
        f"plain SIGKILL of the kernel: median {amed:.1f} ms, leaving a median of "
        f"{median([float(o) for o in orphans]):.0f} orphans (of {median(procs):.0f} processes)"
    )
    result(
        f"kill: request to last process gone, guest with {PROCS} processes",
        round(med, 2),
        round(amed, 2),
        "<= 50 ms median, 0 processes left",
        "ms",
        anchor_name=(
            f"SIGKILL of the kernel process (until reaped; leaves "
            f"{median([float(o) for o in orphans]):.0f} orphans)"
        ),
        ok=med <= 50 and left_ours == 0,
    )


if __name__ == "__main__":
    sys.exit(main())
