"""The host's fence: a small process outside the daemon that kills the owned guests when the
daemon stops renewing the lease (docs/formats/cluster.md, "The fencing argument").

    python -m warden.cluster.fence

reads lines from stdin (the daemon's pipe), each a JSON object of at most 64 KiB:

    {"deadline": S, "parent": PATH}   S: CLOCK_MONOTONIC seconds (the host's clock, shared
                                      by every process); PATH: the home's cgroup, whose every
                                      child group (one per guest) is killed at the deadline
    {"exit": true}                             the daemon stopped its guests: nothing to guard

When the deadline passes with no newer one, it writes "1" to cgroup.kill of each child group
of PATH (which must be under /sys/fs/cgroup): every guest of the home, also one that was
launched after the last message, and says `fenced` on stderr. At EOF (the daemon died) it
keeps the last deadline, fences when it passes, and exits. It imports nothing of warden's so
it starts fast and cannot be frozen by what freezes the daemon.
"""

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

MAX_LINE = 64 << 10
CGROUP_ROOT = Path("/sys/fs/cgroup")


def say(text: str) -> None:
    print(f"warden-fence[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def kill_group(path: Path) -> None:
    try:
        (path / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        if not path.exists():
            return
    except OSError as e:
        say(f"cgroup.kill {path}: {e}")
    # No cgroup.kill (Linux < 5.14): kill each process of the group.
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def valid_parent(raw: object) -> Path | None:
    if isinstance(raw, str):
        p = Path(raw)
        if p.is_absolute() and ".." not in p.parts and CGROUP_ROOT in p.parents:
            return p
    return None


def fence(parent: Path | None) -> None:
    groups = []
    if parent is not None:
        try:
            groups = [g for g in parent.iterdir() if g.is_dir()]
        except OSError:
            groups = []
    for g in groups:
        kill_group(g)
    say(f"fenced: deadline passed, killed {len(groups)} guest cgroups")


def run(stdin_fd: int = 0) -> int:
    deadline: float | None = None
    parent: Path | None = None
    fenced = False
    buf = b""
    eof = False
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline and not fenced:
            fence(parent)
            fenced = True
        if eof:
            if deadline is None or fenced:
                return 0
            time.sleep(max(0.0, deadline - now))
            continue
        wait = None if deadline is None or fenced else max(0.0, deadline - now)
        ready, _, _ = select.select([stdin_fd], [], [], wait)
        if not ready:
            continue
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            eof = True
            continue
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            say("a line longer than 64 KiB: ignored")
            buf = b""
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                say("a line that is not JSON: ignored")
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("exit") is True:
                return 0
            d = msg.get("deadline")
            if isinstance(d, int | float):
                deadline = float(d)
                parent = valid_parent(msg.get("parent"))
                fenced = False


if __name__ == "__main__":
    sys.exit(run())
