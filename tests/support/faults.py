"""The fault campaign (issue 18, section 3): faults injected into a running fleet, and what
each one cost. One implementation serves the test suite's short campaign (tests/test_faults.py)
and the full one `make bench` runs (benchmarks/faults.py, `FAULTS=full`); the faults, how
they are injected and what is counted are written down in
docs/decisions/2026-12-07-fault-campaign.md.

Four faults, each a function that takes a running `DaemonProc` and fills a `Tally`:
- `KillCampaign`: kill -9 of the daemon at random points during start, stop, apply, snapshot
  and merge (for merge, the merging process is killed at the same instant); a new daemon
  re-attaches and the fleet is checked against what the operation may have left.
- `home_fills_up`: WARDEN_HOME on a small tmpfs this code mounts, filled to the last byte by a
  host file while the guests run and print.
- `daemon_stopped`: SIGSTOP of the daemon for a while, then SIGCONT.
- `channel_flood`: one guest floods every channel it has (console output, USER_NOTIFY
  datagrams through /proc/mconsole, and on the honeypot kernel when the shared cache has it,
  its tty log and disguise requests) while a second guest is consoled, balanced and logged.

What a guest printed is known exactly: a `Printer` in the guest writes numbered lines of
LINE_BYTES on a serial line and, when told to stop, says how many it wrote; the session log of
that line is exported and every number looked for (`account`).
"""

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.daemon import WARDEN, DaemonProc, kill_home
from tests.support.netlab import wait_for
from warden.api.client import ApiClient
from warden.disk import inspect as disk_inspect
from warden.disk import merge as disk_merge
from warden.errors import WardenError
from warden.host import cgroup
from warden.paths import Layout, layout

Say = Callable[[str], None]


# ---- sizes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    """How big a campaign is. The short one is what the test suite runs on 2 shared cores;
    the full one is the issue's: 50 kill points, a 30 s SIGSTOP, 100,000 datagrams."""

    name: str
    kill_points: int
    sigstop_seconds: float
    full_seconds: float  # how long WARDEN_HOME stays full
    notify_datagrams: int
    data_mib: int  # what the snapshot and merge guests write to their disks first


SHORT = Size(
    "short", kill_points=5, sigstop_seconds=10, full_seconds=8, notify_datagrams=10_000, data_mib=8
)
FULL = Size(
    "full",
    kill_points=50,
    sigstop_seconds=30,
    full_seconds=30,
    notify_datagrams=100_000,
    data_mib=32,
)


def size_from_env() -> Size:
    """FAULTS=full (or short, the default); FAULTS_POINTS overrides the kill points."""
    name = os.environ.get("FAULTS", "short")
    if name not in ("short", "full"):
        raise ValueError(f"FAULTS={name!r}: expected short or full")
    s = FULL if name == "full" else SHORT
    points = os.environ.get("FAULTS_POINTS")
    if points:
        s = Size(
            s.name, int(points), s.sigstop_seconds, s.full_seconds, s.notify_datagrams, s.data_mib
        )
    return s


# ---- what was lost ----------------------------------------------------------------------
@dataclass
class Tally:
    """What the faults cost. Every list holds one readable line per finding."""

    faults: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # guests that ran before and not after
    wrong: list[str] = field(default_factory=list)  # the daemon's view differs from the host's
    corrupt: list[str] = field(default_factory=list)  # disks (headers, file systems, merges)
    logs_failed: list[str] = field(default_factory=list)  # verify fails, not as a cut
    logs_cut: list[str] = field(default_factory=list)  # verify says "cut"
    debris: list[str] = field(default_factory=list)  # files left behind (nothing broken)
    over: list[str] = field(default_factory=list)  # resource bounds exceeded
    printed: int = 0  # bytes the accounted guests printed
    unlogged: int = 0  # of those, bytes no session log holds and no record counts
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def once(self, kind: str, text: str, key: str | None = None) -> None:
        """Add a finding to list `kind` unless the same `key` (default: the text) was added."""
        k = f"{kind}:{key or text}"
        if k not in self._seen:
            self._seen.add(k)
            getattr(self, kind).append(text)

    def counts(self) -> dict[str, int]:
        kinds = ("lost", "wrong", "corrupt", "logs_failed", "logs_cut", "debris", "over", "notes")
        return {k: len(getattr(self, k)) for k in kinds}

    def since(self, before: dict[str, int]) -> str:
        """What was found since `counts()` returned `before`, for a progress line."""
        now = self.counts()
        found = [f"{k} +{now[k] - n}" for k, n in before.items() if now[k] > n]
        return ", ".join(found) or "nothing found"

    def failures(self) -> list[str]:
        """Every finding against a goal of zero (debris and cuts are listed apart)."""
        out = [f"guest lost: {x}" for x in self.lost]
        out += [f"wrong state: {x}" for x in self.wrong]
        out += [f"disk corrupted: {x}" for x in self.corrupt]
        out += [f"log fails verify: {x}" for x in self.logs_failed]
        out += [f"over its bound: {x}" for x in self.over]
        if self.unlogged:
            out.append(f"{self.unlogged} logged bytes lost of {self.printed} printed")
        return out

    def absorb(self, other: "Tally") -> None:
        """Add another fault's findings and figures to this one (the benchmark's total)."""
        self.faults.update(other.faults)
        for name in self.counts():
            getattr(self, name).extend(getattr(other, name))
        self.printed += other.printed
        self.unlogged += other.unlogged
        self.figures.update(other.figures)

    def report(self) -> str:
        lines = [f"faults injected: {sum(self.faults.values())} ({dict(self.faults)})"]
        for name in self.counts():
            items = getattr(self, name)
            lines.append(f"{name}: {len(items)}")
            lines += [f"  - {x}" for x in items]
        lines.append(f"bytes printed {self.printed}, lost from the logs {self.unlogged}")
        lines += [f"{k}: {v:g}" for k, v in self.figures.items()]
        return "\n".join(lines)


# ---- the host's view of a home ----------------------------------------------------------
def group_pids(lay: Layout, name: str) -> list[int]:
    path = cgroup.detect().unified / f"warden-{lay.instance}" / name / "cgroup.procs"
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, OSError):  # ENODEV: the group is being removed
        return []


def populated_groups(lay: Layout) -> dict[str, list[int]]:
    """Every guest group of this home that holds a process, by machine name."""
    top = cgroup.detect().unified / f"warden-{lay.instance}"
    out: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for g in top.iterdir():
            if g.is_dir() and not g.name.startswith("net."):
                pids = group_pids(lay, g.name)
                if pids:
                    out[g.name] = pids
    return out


def proc_status_kib(pid: int, key: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/PID/status, in KiB (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh at the current RSS (proc(5): clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def db_bytes(lay: Layout) -> int:
    """The database's size as SQLite sees it (pages in use, those still in the WAL included):
    what its rows take, whenever the WAL was last checkpointed."""
    (count,), (size,) = read_db(lay, "PRAGMA page_count"), read_db(lay, "PRAGMA page_size")
    return int(count[0]) * int(size[0])


def db_file_bytes(lay: Layout) -> int:
    """warden.db with its write-ahead log, as the file system sees them (the WAL keeps its
    size after a checkpoint: SQLite's autocheckpoint bounds it at ~1000 pages)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{lay.db}{suffix}").st_blocks * 512
    return total


def read_db(lay: Layout, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A read-only query on the daemon's database (WAL: the daemon keeps writing)."""
    db = sqlite3.connect(f"file:{lay.db}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def last_event_id(lay: Layout) -> int:
    rows = read_db(lay, "SELECT COALESCE(MAX(id), 0) FROM events")
    return int(rows[0][0])


def event_kinds(lay: Layout, machine: str, since: int) -> list[str]:
    rows = read_db(
        lay, "SELECT kind FROM events WHERE machine = ? AND id > ? ORDER BY id", machine, since
    )
    return [str(r[0]) for r in rows]


class DaemonLog:
    """What the daemon wrote to its log since a mark: tracebacks are findings."""

    def __init__(self, d: DaemonProc):
        self.d = d
        self.mark = len(d.log_text())

    def since(self) -> str:
        return self.d.log_text()[self.mark :]

    def tracebacks(self) -> list[str]:
        text = self.since()
        out = []
        for m in re.finditer(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(.*)", text):
            out.append(m.group(1).strip()[:200])
        return out


# ---- consoles ---------------------------------------------------------------------------
class Console:
    """A `warden console` process kept open: what is typed goes in, what the line prints is
    read by `expect` (the CLI's scripted mode, as an operator's script would use it)."""

    def __init__(self, d: DaemonProc, name: str, line: str = "con0", spy: bool = False):
        argv = [*WARDEN, "console", name, "--line", line, "--timeout", "0.5"]
        if spy:
            argv.append("--spy")
        self.name = f"{name}:{line}"
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=d.env,
        )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = bytearray()
        self.pos = 0

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        os.write(self.proc.stdin.fileno(), data)

    def _fill(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return False
        data = os.read(self.fd, 1 << 16)
        if not data:
            raise EOFError(f"{self.name}: the console ended: {bytes(self.buf[-300:])!r}")
        self.buf += data
        return True

    def expect(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        """The first match of `pattern` in what arrived after the previous match."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                if self.pos > 1 << 20:  # keep the buffer small on a chatty line
                    del self.buf[: self.pos]
                    self.pos = 0
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.name}: {pattern!r} not seen in {timeout:.0f}s: "
                    f"{bytes(self.buf[-300:])!r}"
                )
            self._fill(left)

    def drain(self) -> None:
        while self._fill(0.05):
            pass
        self.pos = len(self.buf)

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the line; its output (between two markers)."""
        tag = f"m{time.monotonic_ns()}"
        # The markers are computed by the shell, so the echo of the typed line never matches.
        self.send(f"echo {tag}-$((1+0)); {command}; echo {tag}-$((1+1))\n".encode())
        self.expect(rf"{tag}-1\r?\n".encode(), timeout)
        m = self.expect(rf"(.*?){tag}-2".encode(), timeout)
        return m.group(1).decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def console(d: DaemonProc, name: str, line: str = "con0", spy: bool = False) -> Iterator[Console]:
    c = Console(d, name, line, spy)
    try:
        yield c
    finally:
        c.close()


def sh(d: DaemonProc, name: str, command: str, line: str = "con0", timeout: float = 60) -> str:
    """Run one shell command on a guest's line; return its output."""
    with console(d, name, line) as c:
        return c.run(command, timeout)


def answers(d: DaemonProc, name: str, timeout: float = 30) -> str | None:
    """None if the guest's console runs a command within `timeout`, else why not."""
    try:
        out = sh(d, name, "echo alive-$((20+22))", timeout=timeout)
    except (TimeoutError, EOFError, OSError) as e:
        return str(e)[:200]
    return None if "alive-42" in out else f"unexpected answer {out[-100:]!r}"


def wait_states(d: DaemonProc, want: dict[str, str], timeout: float = 120) -> None:
    def ok() -> bool:
        ls = d.ls()
        return all(ls.get(n, {}).get("state") == s for n, s in want.items())

    wait_for(f"states {want}", ok, timeout)


# ---- a guest that prints what it will be held to ----------------------------------------
LINE_BYTES = 64  # per printed line, the newline included
PAD = "x" * (LINE_BYTES - 10)  # "S" + 8 digits + PAD + "\n"
LINE_RX = re.compile(rb"S(\d{8})" + PAD.encode() + rb"\r?\n")


class Printer:
    """Numbered lines on a guest's serial line (ttyS0: ssl0), `per_tick` at a time with
    `pause_us` between (0: as fast as the guest can), until told to stop. The guest's tty
    turns "\\n" into "\\r\\n" on the way out; bytes are counted as the program wrote them."""

    def __init__(self, name: str, per_tick: int = 1, pause_us: int = 20_000, line: str = "ssl0"):
        self.name = name
        self.line = line
        self.tty = "ttyS" + line[3:]
        self.per_tick = per_tick
        self.pause_us = pause_us

    def start(self, d: DaemonProc) -> None:
        pause = f"usleep {self.pause_us}; " if self.pause_us else ""
        loop = (
            f"i=0; while [ ! -e /tmp/halt-printer ]; do n=0; "
            f"while [ $n -lt {self.per_tick} ]; do i=$((i+1)); printf 'S%08d{PAD}\\n' $i; "
            f"n=$((n+1)); done; {pause}done; echo $i > /tmp/printed"
        )
        sh(
            d,
            self.name,
            f"rm -f /tmp/halt-printer /tmp/printed; ({loop}) > /dev/{self.tty} 2>/dev/null & true",
        )

    def stop(self, d: DaemonProc, timeout: float = 60) -> int:
        """Stop the loop; the number of lines it printed."""
        sh(d, self.name, "touch /tmp/halt-printer")

        def printed() -> int | None:
            out = sh(d, self.name, "cat /tmp/printed 2>/dev/null").strip()
            return int(out) if out.isdigit() else None

        n = int(wait_for(f"{self.name}'s printer to stop", printed, timeout, 0.5))
        time.sleep(1.0)  # what the guest's tty still held reaches the daemon
        return n


def logged_lines(d: DaemonProc, name: str, line: str, work: Path) -> Counter[int]:
    """How often each numbered line appears in the session logs of `name`'s `line` (every
    boot and part, as `warden logs export --format raw` gives them)."""
    rows = json.loads(d.cli("logs", "ls", name, "--json").stdout)
    boots = sorted({r["boot"] for r in rows if r["line"] == line and not r["archived"]})
    seen: Counter[int] = Counter()
    out = work / f"export-{name}-{line}.raw"
    for boot in boots:
        out.unlink(missing_ok=True)
        d.cli(
            "logs",
            "export",
            f"{name}:{line}",
            "--format",
            "raw",
            "--boot",
            str(boot),
            "-o",
            str(out),
        )
        seen.update(int(m.group(1)) for m in LINE_RX.finditer(out.read_bytes()))
    out.unlink(missing_ok=True)
    return seen


def account(
    d: DaemonProc,
    printer: Printer,
    printed: int,
    work: Path,
    tally: Tally,
    what: str,
    drops: list[dict[str, Any]] | None = None,
) -> tuple[int, int]:
    """Hold `printed` lines against the logs: (lines missing, lines logged twice). Missing
    lines that the log's own records count as not written (`drops`: "dropped" or
    "write-failed" records, whose byte counts are totals per file, in bytes as read from the
    FIFO: 65 per line after the tty's "\r") are reported, not lost; the rest is unlogged."""
    seen = logged_lines(d, printer.name, printer.line, work)
    missing = [k for k in range(1, printed + 1) if k not in seen]
    twice = sum(c - 1 for k, c in seen.items() if c > 1)
    counted = dropped_total(drops or [])
    slack = 2 * len(drops or [])  # a record cut at a drop holds part of a line
    unrecorded = max(0, len(missing) - counted // (LINE_BYTES + 1) - slack)
    tally.printed += printed * LINE_BYTES
    tally.unlogged += unrecorded * LINE_BYTES
    if missing:
        tally.notes.append(
            f"{what}: {len(missing)} of {printed} lines ({len(missing) * LINE_BYTES} bytes) "
            f"{printer.name} printed on {printer.line} are in no log ({_runs(missing)}); "
            f"the log counts {counted} bytes as not written"
        )
    if twice:
        tally.notes.append(f"{what}: {twice} lines of {printer.name} are logged twice")
    return len(missing), twice


def _runs(numbers: list[int], most: int = 6) -> str:
    """1,2,3,7,8 -> '1-3, 7-8' (the first `most` runs)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:most])
    return text + (f" and {len(runs) - most} more runs" if len(runs) > most else "")


# ---- logs and disks ---------------------------------------------------------------------
def check_logs(d: DaemonProc, tally: Tally, when: str) -> None:
    """`warden logs verify --json` over the whole home: every file that does not verify is a
    finding; a "cut" one is listed apart (a kill -9 may cut the file it was writing)."""
    r = d.cli("logs", "verify", "--json", check=False)
    try:
        results = json.loads(r.stdout)
    except json.JSONDecodeError:
        tally.once("logs_failed", f"{when}: `warden logs verify` failed: {r.stderr.strip()[:300]}")
        return
    for v in results:
        if v["ok"]:
            continue
        label = f"{v['machine']} {v['line']} boot {v['boot']} part {v['part']}"
        text = f"{label}: {v['status']}: {v['message']} (seen {when})"
        kind = "logs_cut" if v["status"] == "cut" else "logs_failed"
        tally.once(kind, text, key=f"{v['path']}:{v['status']}")


def recorded_base(cow: Path) -> dict[str, Any]:
    """What `warden disk` passes for a machine's disk: the base warden recorded, which decides
    over the (guest-writable) header's path (warden.disk.recorded, from the disk work of issue
    18). Before that work there is no such module and the header decides: no argument."""
    try:
        from warden.disk import recorded
    except ImportError:
        return {}
    return {"recorded": recorded.lookup(cow)}


def check_cow(path: Path, tally: Tally, what: str) -> bool:
    """The COW file's header parses and its backing file matches (`warden disk inspect`)."""
    try:
        info = disk_inspect.inspect(path, **recorded_base(path)).as_json()
    except (WardenError, OSError) as e:
        tally.once("corrupt", f"{what}: {path}: {e}")
        return False
    if not info["backing"]["ok"]:
        tally.once("corrupt", f"{what}: {path}: backing file does not match: {info['backing']}")
        return False
    return True


def fsck_cow(cow: Path, work: Path, tally: Tally, what: str, crash_consistent: bool) -> None:
    """Merge the COW over its base into a scratch image and run e2fsck on it: a guest's disk
    after a clean stop must be clean (`-fn` exits 0); a snapshot is crash-consistent, so its
    journal may need replaying and orphans cleaning (`-fp` exits 0 or 1), nothing more."""
    if not check_cow(cow, tally, what):
        return
    img = work / "fsck.img"
    img.unlink(missing_ok=True)
    try:
        disk_merge.merge(cow, img, sync=False, **recorded_base(cow))
        argv = ["e2fsck", "-fp" if crash_consistent else "-fn", str(img)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        worst = 1 if crash_consistent else 0
        if r.returncode > worst:
            tally.once(
                "corrupt",
                f"{what}: e2fsck {argv[1]} exited {r.returncode}: {(r.stdout + r.stderr)[-300:]}",
            )
    except (WardenError, OSError) as e:
        tally.once("corrupt", f"{what}: merging {cow} for e2fsck failed: {e}")
    finally:
        img.unlink(missing_ok=True)


def file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def temp_debris(directory: Path) -> list[Path]:
    """Hidden temporary files warden.disk writes before publishing (hostfile.temp_file)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)


def check_fleet(d: DaemonProc, tally: Tally, when: str, settle: float = 90) -> dict[str, Any]:
    """After a fault: wait until no guest is starting or stopping, then hold the daemon's view
    of every guest against the host's (its cgroup) and the guest itself (its console).
    Returns `warden ls`."""
    deadline = time.monotonic() + settle
    while True:
        ls = d.ls()
        moving = [n for n, m in ls.items() if m["state"] in ("starting", "stopping")]
        if not moving or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    groups = populated_groups(d.layout)
    for name, m in ls.items():
        pids = groups.pop(name, [])
        state = m["state"]
        if state in ("running", "paused") and not pids:
            tally.once("wrong", f"{when}: {name}: the daemon says {state}, no process runs")
        elif state in ("stopped", "crashed", "absent") and pids:
            tally.once(
                "wrong",
                f"{when}: {name}: {len(pids)} processes run, the daemon says {state} "
                f"(desired {m['desired']})",
            )
        elif state in ("starting", "stopping"):
            tally.once("wrong", f"{when}: {name}: still {state} {settle:.0f}s after the fault")
    for name, pids in groups.items():
        tally.once("wrong", f"{when}: {name}: {len(pids)} processes of a guest no daemon lists")
    running = [n for n, m in ls.items() if m["state"] == "running"]
    why: dict[str, str | None] = {}
    threads = [threading.Thread(target=lambda n=n: why.update({n: answers(d, n)})) for n in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, reason in why.items():
        if reason is not None:
            tally.once(
                "wrong",
                f"{when}: {name}: running, but its console does not answer: {reason}",
                key=f"{when}:{name}:answers",
            )
    return ls


# ---- fault 1: kill -9 during operations -------------------------------------------------
OWNER = '[[owner]]\nname = "ops"\n'


def machine(name: str, autostart: bool, serial: int = 0, image: str = "minimal") -> str:
    return (
        f'[[machine]]\nname = "{name}"\nowner = "ops"\nmemory = "64M"\nimage = "{image}"\n'
        f"autostart = {'true' if autostart else 'false'}\nserial_lines = {serial}\n"
    )


@dataclass
class Fired:
    """One operation under way when the daemon is killed."""

    op: str
    point: int
    delay: float = 0.0
    since_event: int = 0
    thread: threading.Thread | None = None
    child: int | None = None  # a forked merge
    error: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)


class KillCampaign:
    """kill -9 of the daemon at `size.kill_points` random points during start, stop, apply,
    snapshot and merge.

    The fleet: s1 prints numbered lines on ssl0 for the whole campaign (its logs must lose
    nothing, it must never be restarted); c1 is started and stopped; c2 runs and is
    snapshotted (its disk holds `data_mib` of data, so a snapshot's pause is long enough to be
    hit); c3 is added (autostart) and pruned by `apply`; m1 is stopped and merged: to a new
    image (`merge`), or in place into a private copy of its base (`merge --in-place`). The kill
    point is drawn uniformly within the operation's duration measured beforehand in the same
    run; the seed is printed, so a finding can be replayed.
    """

    OPS = ("start", "stop", "apply", "snapshot", "merge")

    def __init__(
        self, d: DaemonProc, size: Size, tally: Tally, work: Path, say: Say, seed: int | None = None
    ):
        self.d = d
        self.size = size
        self.tally = tally
        self.work = work
        self.say = say
        self.seed = seed if seed is not None else int(os.environ.get("FAULTS_SEED", time.time()))
        self.rng = random.Random(self.seed)
        self.api = ApiClient(d.layout, timeout=180)
        self.printer = Printer("s1", per_tick=10, pause_us=50_000)
        self.durations: dict[str, float] = {}
        self.s1_pid = 0
        self.fleet = {False: OWNER, True: OWNER}
        self.ref_hash = ""
        self.reattach_s: list[float] = []
        self.snapshots: list[str] = []
        self.merges = 0

    # -- set-up
    def setup(self) -> None:
        a = (
            OWNER
            + machine("s1", True, serial=1)
            + machine("c1", False)
            + machine("c2", True)
            + machine("m1", False)
        )
        self.fleet = {False: a, True: a + machine("c3", True)}
        self.d.apply(self.fleet[False])
        wait_states(self.d, {"s1": "running", "c2": "running"})
        self.d.cli("start", "m1")
        mib = self.size.data_mib
        for name in ("c2", "m1"):
            sh(
                self.d,
                name,
                f"dd if=/dev/urandom of=/data bs=1M count={mib} 2>/dev/null; sync",
                timeout=300,
            )
        self.d.cli("stop", "m1")
        self.m1_cow = self.d.layout.machine("m1") / "disk.cow"
        ref = self.work / "m1-reference.img"
        disk_merge.merge(self.m1_cow, ref, sync=False, **recorded_base(self.m1_cow))
        self.ref_hash = file_hash(ref)
        ref.unlink()
        self.printer.start(self.d)
        self.s1_pid = int(self.d.ls()["s1"]["pid"])
        self._measure()

    def _timed(self, fn: Callable[[], Any]) -> float:
        t0 = time.monotonic()
        fn()
        return time.monotonic() - t0

    def _measure(self) -> None:
        """How long each operation takes here and now: kill points are drawn within it."""
        api = self.api
        self.durations["start"] = self._timed(lambda: api.post("/machines/c1/start", {}))
        # "running" comes with the kernel's first notify, before init can take ctrl-alt-del:
        # a stop that early waits out the 30 s cad timeout. Stops are timed (and fired) on a
        # guest that answers its console.
        if answers(self.d, "c1", 60) is not None:
            raise RuntimeError("c1 does not answer its console after a start")
        self.durations["stop"] = self._timed(lambda: api.post("/machines/c1/stop", {}))
        self.durations["snapshot"] = self._timed(
            lambda: api.post("/machines/c2/snapshots", {"snapshot": "warm-up"})
        )
        self.snapshots.append("warm-up")
        self.durations["apply"] = self._timed(lambda: self._apply_and_settle(True))
        self._apply_and_settle(False)
        out = self.work / "warm-up.img"
        self.durations["merge"] = self._timed(lambda: self._merge(out, False, wait=True))
        out.unlink(missing_ok=True)
        self._private_copies()
        self.durations["merge in place"] = self._timed(lambda: self._merge(out, True, wait=True))
        self.say(
            "operation durations here: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.durations.items())
        )

    def _apply_and_settle(self, with_c3: bool) -> None:
        self.api.post("/fleet", {"text": self.fleet[with_c3], "source": "faults", "prune": True})
        if with_c3:
            wait_states(self.d, {"c3": "running"})
        else:
            wait_for("c3 pruned", lambda: "c3" not in self.d.ls(), 60)
            wait_for("c3's files gone", lambda: not self.d.layout.machine("c3").exists(), 60)

    # -- the merge runs in a forked child: the same code `warden disk merge` runs, without
    # an interpreter start-up in the window the kill point is drawn from
    def _merge(self, out: Path, in_place: bool, wait: bool) -> int:
        """Merge m1 into `out`, or in place into the private copy of its base (made first by
        `_private_copies`); the child's pid."""
        cow = self.work / "m1-copy.cow"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                if in_place:
                    disk_merge.merge_in_place(cow)
                else:
                    disk_merge.merge(self.m1_cow, out, **recorded_base(self.m1_cow))
            except BaseException:
                code = 1
            os._exit(code)
        if wait:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the warm-up merge failed"
        return pid

    def _private_copies(self) -> tuple[Path, Path]:
        """A copy of m1's base (same size and mtime) and of its COW, rebased onto the copy:
        an in-place merge may change only files of its own."""
        info = disk_inspect.inspect(self.m1_cow, **recorded_base(self.m1_cow)).as_json()
        base = Path(info["backing"]["checked_path"])
        pbase, pcow = self.work / "base-copy.img", self.work / "m1-copy.cow"
        for p in (pbase, pcow):
            p.unlink(missing_ok=True)
        subprocess.run(["cp", "--sparse=always", "-p", str(base), str(pbase)], check=True)
        subprocess.run(["cp", "--sparse=always", str(self.m1_cow), str(pcow)], check=True)
        pbase.chmod(0o644)
        self.d.cli("disk", "rebase", str(pcow), "--backing", str(pbase))
        return pbase, pcow

    # -- the campaign
    def run(self) -> None:
        order = list(self.OPS)
        schedule: list[str] = []
        while len(schedule) < self.size.kill_points:
            self.rng.shuffle(order)
            schedule += order
        self.say(f"kill -9 campaign: {self.size.kill_points} points, seed {self.seed}")
        for i, op in enumerate(schedule[: self.size.kill_points]):
            self.point(i, op)

    def point(self, i: int, op: str) -> None:
        getattr(self, f"_prepare_{op}")()
        fired = Fired(op, i, since_event=last_event_id(self.d.layout))
        fired.delay = self.rng.uniform(0, self.durations[op] * 1.1)
        getattr(self, f"_fire_{op}")(fired)
        self.d.kill9()
        if fired.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fired.child, signal.SIGKILL)
            os.waitpid(fired.child, 0)
        if fired.thread is not None:
            fired.thread.join(30)
        self.tally.faults[f"kill -9 during {op}"] += 1
        t0 = time.monotonic()
        self.d.start(timeout=120)
        self.reattach_s.append(time.monotonic() - t0)
        when = f"kill {i + 1} ({op} at {fired.delay * 1000:.0f} ms)"
        before = self.tally.counts()
        ls = check_fleet(self.d, self.tally, when)
        s1 = ls.get("s1", {})
        if s1.get("state") != "running" or s1.get("pid") != self.s1_pid:
            self.tally.once(
                "lost",
                f"{when}: s1 (printing the whole campaign) is "
                f"{s1.get('state')} with pid {s1.get('pid')}, was pid {self.s1_pid}",
                key="s1",
            )
        if ls.get("c2", {}).get("state") != "running":
            self.tally.once("lost", f"{when}: c2 is {ls.get('c2', {}).get('state')}")
        getattr(self, f"_check_{op}")(fired, ls, when)
        check_logs(self.d, self.tally, when)
        for name in ls:
            cow = self.d.layout.machine(name) / "disk.cow"
            if cow.exists():
                check_cow(cow, self.tally, when)
        self.say(f"  {when}: re-attached in {self.reattach_s[-1]:.1f}s; {self.tally.since(before)}")

    def _call(self, fired: Fired, method: str, path: str, body: dict[str, Any]) -> None:
        def go() -> None:
            try:
                self.api.call(method, path, body)
            except (WardenError, OSError) as e:  # the daemon died under it: expected
                fired.error.append(str(e)[:200])
            except Exception as e:  # http.client's errors when the connection is cut
                fired.error.append(f"{type(e).__name__}: {e}"[:200])

        fired.thread = threading.Thread(target=go, daemon=True)
        t0 = time.monotonic()
        fired.thread.start()
        _sleep_until(t0 + fired.delay)

    # start: c1 from stopped
    def _prepare_start(self) -> None:
        self._c1_to("stopped")

    def _fire_start(self, fired: Fired) -> None:
        self._call(fired, "POST", "/machines/c1/start", {})

    def _check_start(self, fired: Fired, ls: dict[str, Any], when: str) -> None:
        state = ls["c1"]["state"]
        asked = "starting" in event_kinds(self.d.layout, "c1", fired.since_event)
        if state == "running" or (state == "stopped" and not asked):
            return
        self.tally.once(
            "wrong",
            f"{when}: c1 was being started and is {state} (desired "
            f"{ls['c1']['desired']}, last exit {ls['c1']['last_exit']})",
        )

    # stop: c1 from running
    def _prepare_stop(self) -> None:
        self._c1_to("running")

    def _fire_stop(self, fired: Fired) -> None:
        self._call(fired, "POST", "/machines/c1/stop", {})

    def _check_stop(self, fired: Fired, ls: dict[str, Any], when: str) -> None:
        c1 = ls["c1"]
        asked = "stopping" in event_kinds(self.d.layout, "c1", fired.since_event)
        if c1["state"] == "stopped" or (c1["state"] == "running" and not asked):
            return
        self.tally.once(
            "wrong",
            f"{when}: c1 was asked to stop and is {c1['state']} (desired "
            f"{c1['desired']}, last exit {c1['last_exit']})",
        )

    def _c1_to(self, state: str) -> None:
        c1 = self.d.ls()["c1"]["state"]
        if state == "stopped" and c1 not in ("stopped", "crashed"):
            with contextlib.suppress(WardenError):
                self.api.post("/machines/c1/stop", {})
            if self.d.ls()["c1"]["state"] not in ("stopped", "crashed"):
                self.api.post("/machines/c1/kill", {})
        if state == "running" and c1 != "running":
            if c1 in ("starting", "stopping", "paused"):
                self.api.post("/machines/c1/kill", {})
            self.api.post("/machines/c1/start", {})
            if answers(self.d, "c1", 60) is not None:
                self.tally.notes.append("c1 did not answer after a start (before a stop)")

    # apply: fleet A <-> fleet B (B adds c3, autostart; going back prunes it)
    def _prepare_apply(self) -> None:
        pass

    def _stored_fleet(self) -> str:
        saved = self.api.get("/fleet")
        return str(saved.get("text", "")) if saved else ""

    def _fire_apply(self, fired: Fired) -> None:
        with_c3 = self._stored_fleet() != self.fleet[True]
        fired.context["to_c3"] = with_c3
        self._call(
            fired,
            "POST",
            "/fleet",
            {"text": self.fleet[with_c3], "source": "faults", "prune": True},
        )

    def _check_apply(self, fired: Fired, ls: dict[str, Any], when: str) -> None:
        text = self._stored_fleet()
        if text not in (self.fleet[False], self.fleet[True]):
            self.tally.once("wrong", f"{when}: the stored fleet is neither the old nor the new")
            return
        if text == self.fleet[True]:
            c3 = ls.get("c3")
            if c3 is None or c3["state"] != "running":
                self.tally.once(
                    "wrong",
                    f"{when}: the fleet with c3 (autostart) is applied, c3 "
                    f"is {c3 and c3['state']} (last exit {c3 and c3['last_exit']})",
                )
            return
        if "c3" in ls:
            self.tally.once("wrong", f"{when}: c3 was pruned and is still listed")
        with contextlib.suppress(AssertionError):  # a pruning daemon may still be at it
            wait_for("c3's files gone", lambda: not self.d.layout.machine("c3").exists(), 20)
        left = self.d.layout.machine("c3")
        if left.exists():
            self.tally.once("debris", f"{when}: the files of pruned c3 stay in {left}")
        rows = read_db(self.d.layout, "SELECT state FROM machines WHERE name = 'c3'")
        if rows:
            self.tally.once(
                "debris",
                f"{when}: pruned c3 keeps a database row (state "
                f"{rows[0][0]}): the next fleet naming c3 starts from it",
            )

    # snapshot: of c2, running
    def _prepare_snapshot(self) -> None:
        if self.d.ls()["c2"]["state"] != "running":
            self.api.post("/machines/c2/start", {})

    def _fire_snapshot(self, fired: Fired) -> None:
        name = f"k{fired.point + 1}"
        fired.context["name"] = name
        self._call(fired, "POST", "/machines/c2/snapshots", {"snapshot": name})

    def _check_snapshot(self, fired: Fired, ls: dict[str, Any], when: str) -> None:
        directory = self.d.layout.machine("c2") / "snapshots" / fired.context["name"]
        staged = temp_debris(directory.parent)  # the new daemon has started: none may stay
        if staged:
            self.tally.once(
                "debris", f"{when}: a killed snapshot's staging stays: {[p.name for p in staged]}"
            )
        if not directory.exists():
            return
        if (directory / "meta.json").exists():
            if check_cow(directory / "disk.cow", self.tally, when):
                self.snapshots.append(directory.name)
            return
        self.tally.once(
            "debris",
            f"{when}: an unfinished snapshot stays in {directory} "
            f"({', '.join(p.name for p in directory.iterdir()) or 'empty'}): "
            "no listing shows it and a new snapshot of that name is refused",
        )

    # merge: m1 (stopped), into a new image or in place into a private copy of its base
    def _prepare_merge(self) -> None:
        pass

    def _fire_merge(self, fired: Fired) -> None:
        in_place = self.merges % 2 == 1
        self.merges += 1
        out = self.work / f"merge-{fired.point + 1}.img"
        fired.context.update(in_place=in_place, out=out)
        if in_place:
            self._private_copies()
            fired.context["before"] = os.stat(self.work / "base-copy.img").st_mtime_ns
            fired.delay = self.rng.uniform(0, self.durations["merge in place"] * 1.1)
        t0 = time.monotonic()
        fired.child = self._merge(out, in_place, wait=False)
        _sleep_until(t0 + fired.delay)

    def _check_merge(self, fired: Fired, ls: dict[str, Any], when: str) -> None:
        if fired.context["in_place"]:
            self._check_merge_in_place(fired, when)
            return
        out: Path = fired.context["out"]
        for p in temp_debris(out.parent):
            # Not debris the daemon could clean: the process that made it is gone.
            self.tally.notes.append(
                f"{when}: the killed merge left {p.name} ({p.stat().st_size} bytes) beside its "
                "output; nothing removes it"
            )
            p.unlink()
        if out.exists():
            if file_hash(out) != self.ref_hash:
                self.tally.once("corrupt", f"{when}: {out} exists but differs from the merge")
            out.unlink()

    def _check_merge_in_place(self, fired: Fired, when: str) -> None:
        base, cow = self.work / "base-copy.img", self.work / "m1-copy.cow"
        if os.stat(base).st_mtime_ns == fired.context["before"]:
            return  # killed before it wrote
        # The documented way back from a partly merged base: rebase ignoring the mtime, merge
        # again (its error message says so); the base must then be the merge, byte for byte.
        r1 = self.d.cli(
            "disk", "rebase", str(cow), "--backing", str(base), "--ignore-mtime", check=False
        )
        r2 = self.d.cli("disk", "merge", str(cow), "--in-place", check=False)
        if r1.returncode or r2.returncode:
            self.tally.once(
                "corrupt",
                f"{when}: an in-place merge killed part-way cannot be "
                f"finished: {(r1.stderr + r2.stderr).strip()[:300]}",
            )
        elif file_hash(base) != self.ref_hash:
            self.tally.once(
                "corrupt",
                f"{when}: an in-place merge killed part-way and re-run does not give the merge",
            )

    # -- the end
    def finish(self) -> None:
        printed = self.printer.stop(self.d)
        account(self.d, self.printer, printed, self.work, self.tally, "kill -9 campaign")
        check_logs(self.d, self.tally, "at the end")
        live = [
            n for n, m in self.d.ls().items() if m["state"] in ("running", "paused", "starting")
        ]
        stops = [
            threading.Thread(target=self.d.cli, args=("stop", n), kwargs={"check": False})
            for n in live
        ]
        for t in stops:
            t.start()
        for t in stops:
            t.join()
        ls = self.d.ls()
        for name, m in ls.items():
            if m["state"] != "stopped" and m["state"] != "absent":
                self.tally.once(
                    "wrong",
                    f"at the end: {name} did not stop cleanly: {m['state']} ({m['last_exit']})",
                )
            cow = self.d.layout.machine(name) / "disk.cow"
            if cow.exists() and not group_pids(self.d.layout, name):
                fsck_cow(cow, self.work, self.tally, f"{name}'s disk", crash_consistent=False)
        for snap in self.snapshots:
            cow = self.d.layout.machine("c2") / "snapshots" / snap / "disk.cow"
            fsck_cow(cow, self.work, self.tally, f"c2 snapshot {snap}", crash_consistent=True)
        self.tally.figures["daemon re-attach, median s"] = (
            sorted(self.reattach_s)[len(self.reattach_s) // 2] if self.reattach_s else 0.0
        )


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.001) if left < 0.005 else left - 0.004)


def kill_campaign(d: DaemonProc, size: Size, work: Path, say: Say = print) -> Tally:
    tally = Tally()
    camp = KillCampaign(d, size, tally, work, say)
    camp.setup()
    log = DaemonLog(d)
    camp.run()
    camp.finish()
    for tb in log.tracebacks():
        tally.once("notes", f"daemon traceback: {tb}")
    return tally


# ---- fault 2: WARDEN_HOME fills up ------------------------------------------------------
@contextlib.contextmanager
def small_home(mib: int, ext4: bool = False) -> Iterator[Layout]:
    """A WARDEN_HOME on a tmpfs of `mib` MiB, mounted here and unmounted after (whatever is
    left running of it is killed through its cgroups first). `ext4`: an ext4 filesystem in a
    file instead, loop-mounted: the pages a guest writes to a COW file on tmpfs are charged to
    the guest's memory cgroup (a guest writing its disk fast is OOM-killed), on a disk
    filesystem they are page cache, as on a real host."""
    top = Path(tempfile.mkdtemp(prefix="wff-", dir="/tmp"))
    backing = top.with_suffix(".ext4")
    if ext4:
        with open(backing, "wb") as f:
            f.truncate(mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-E", "nodiscard", str(backing)], check=True)
        subprocess.run(["mount", "-o", "loop", str(backing), str(top)], check=True)
        top.chmod(0o755)
    else:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "wardenfull", str(top)],
            check=True,
        )
    lay = layout(top)
    try:
        lay.ensure()
        yield lay
    finally:
        kill_home(lay)
        for _ in range(50):
            if subprocess.run(["umount", str(top)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(top)], check=False)
        shutil.rmtree(top, ignore_errors=True)
        backing.unlink(missing_ok=True)


def fill(directory: Path) -> tuple[Path, int]:
    """Write a file in `directory` until the file system refuses another byte."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    total = 0
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"\xa5" * chunk
            while True:
                try:
                    total += os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path, total


def log_drop_records(d: DaemonProc, name: str, line: str) -> list[dict[str, Any]]:
    """The records of `name`'s `line` log (latest boot) that count what was not written:
    "dropped" and "write-failed" events (`bytes_out`: totals for the file so far) and END
    (`dropped_bytes`: the file's total, the only count once the quota stops events too)."""
    r = d.cli("logs", "dump", f"{name}:{line}", "--json", check=False)
    out = []
    for text in r.stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(text)
            kind = str(rec.get("kind", rec.get("type", "")))
            if "drop" in kind or "fail" in kind or "full" in kind or kind == "end":
                out.append(rec)
    return out


def dropped_total(records: list[dict[str, Any]]) -> int:
    """The bytes of output `log_drop_records` says were not written (the largest total)."""
    counts = [int(r.get("bytes_out") or 0) for r in records if r.get("kind") != "end"]
    counts += [int(r.get("dropped_bytes") or 0) for r in records if r.get("kind") == "end"]
    return max(counts, default=0)


def home_fills_up(
    d: DaemonProc, size: Size, work: Path, say: Say = print, image: str = "minimal"
) -> Tally:
    """`d` runs on a small home (`small_home`). Two guests: f1 prints on ssl0 and is consoled;
    f2 is stopped. The home is filled to the last byte for `size.full_seconds`; meanwhile the
    daemon must answer (ls, events, a console), a snapshot of f1 and a start of f2 must fail
    cleanly or work, and f1 must run on. Then the space comes back; the logs must verify and
    say what they could not hold, warden.db must pass its integrity check."""
    tally = Tally()
    log = DaemonLog(d)
    d.apply(OWNER + machine("f1", True, serial=1, image=image) + machine("f2", False, image=image))
    wait_states(d, {"f1": "running"})
    d.cli("create", "f2", check=False)
    pid = int(d.ls()["f1"]["pid"])
    printer = Printer("f1", per_tick=10, pause_us=20_000)
    printer.start(d)
    time.sleep(2)
    filler, filled = fill(d.layout.home)
    tally.faults["WARDEN_HOME full"] += 1
    say(
        f"home full: {filled >> 20} MiB written by the filler; staying full "
        f"{size.full_seconds:.0f}s"
    )
    t_end = time.monotonic() + size.full_seconds
    served: list[str] = []
    for what, argv in (("ls", ("ls", "--json")), ("events", ("events", "--json"))):
        r = d.cli(*argv, check=False, timeout=60)
        if r.returncode:
            tally.once("wrong", f"home full: `warden {what}` failed: {r.stderr.strip()[:200]}")
        else:
            served.append(what)
    why = answers(d, "f1", 60)
    if why is not None:
        tally.once("wrong", f"home full: f1's console does not answer: {why}")
    snap = d.cli("disk", "snapshot", "f1", "--name", "full", check=False, timeout=120)
    say(
        f"  snapshot of f1 on a full home: exit {snap.returncode}: "
        f"{(snap.stdout + snap.stderr).strip()[:200]}"
    )
    sdir = d.layout.machine("f1") / "snapshots" / "full"
    if snap.returncode and sdir.exists():
        tally.once("debris", f"home full: the failed snapshot left {sdir}")
    start = d.cli("start", "f2", check=False, timeout=180)
    say(
        f"  start of f2 on a full home: exit {start.returncode}: "
        f"{(start.stdout + start.stderr).strip()[-200:]}"
    )
    guest_io = sh(
        d,
        "f1",
        "dd if=/dev/urandom of=/junk bs=64k count=32 2>&1 | tail -1; sync; echo rc=$?",
        timeout=120,
    )
    say(f"  f1 writing 2 MiB to its disk meanwhile: {guest_io.strip()[-120:]!r}")
    _sleep_until(t_end)
    if d.proc is None or d.proc.poll() is not None:
        tally.once("wrong", "home full: the daemon exited")
        return tally
    filler.unlink()
    say("home has room again")
    time.sleep(3)
    ls = check_fleet(d, tally, "after the home was full")
    if ls.get("f1", {}).get("pid") != pid:
        tally.once(
            "lost",
            f"f1 ran as pid {pid} before the home filled, now "
            f"{ls.get('f1', {}).get('state')} pid {ls.get('f1', {}).get('pid')}",
        )
    printed = printer.stop(d)
    drops = log_drop_records(d, "f1", "ssl0")
    missing, _ = account(d, printer, printed, work, tally, "home full", drops)
    say(
        f"  f1's ssl0 log: {missing} of {printed} lines missing; records of the loss: "
        f"{[{k: v for k, v in r.items() if k != 'data'} for r in drops][:4]}"
    )
    if missing and not drops:
        tally.once(
            "logs_failed",
            f"f1 ssl0: {missing * LINE_BYTES} bytes are missing and no record of the log says so",
        )
    check_logs(d, tally, "after the home was full")
    rows = read_db(d.layout, "PRAGMA integrity_check")
    if rows != [("ok",)]:
        tally.once("corrupt", f"warden.db: integrity_check says {rows[:3]}")
    for name in ("f1", "f2"):
        cow = d.layout.machine(name) / "disk.cow"
        if cow.exists():
            check_cow(cow, tally, f"{name} after the home was full")
    d.cli("stop", "f1", check=False)
    fsck_cow(
        d.layout.machine("f1") / "disk.cow",
        work,
        tally,
        "f1's disk after the home was full",
        crash_consistent=False,
    )
    for tb in log.tracebacks():
        tally.once("notes", f"daemon traceback: {tb}")
    tally.figures["home full: bytes written by the filler"] = filled
    return tally


# ---- fault 3: the daemon stopped --------------------------------------------------------
def memory_log(lay: Layout, kind: str, since: float) -> list[dict[str, Any]]:
    """The balancer's records of `kind` ("tick", "act") after `since` (docs/formats/memlog.md)."""
    out = []
    for f in sorted((lay.home / "memory" / "log").glob("*.jsonl")):
        for text in f.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(text)
                if rec.get("k") == kind and rec.get("t", 0) > since:
                    out.append(rec)
    return out


def daemon_stopped(d: DaemonProc, size: Size, work: Path, say: Say = print) -> Tally:
    """SIGSTOP of the daemon for `size.sigstop_seconds`, then SIGCONT. p1 prints as fast as it
    can on ssl0 (its FIFO, 1 MiB, fills within seconds); q1 has a console attached the whole
    time. The guests must run on (their kernels use CPU while the daemon is stopped), the
    console must come back, every printed byte must reach the log, the balancer must tick
    again within seconds, and nothing may panic."""
    tally = Tally()
    log = DaemonLog(d)
    d.apply(OWNER + machine("p1", True, serial=1) + machine("q1", True))
    wait_states(d, {"p1": "running", "q1": "running"})
    printer = Printer("p1", per_tick=50, pause_us=0)
    printer.start(d)
    ls = d.ls()
    kernels = {n: int(ls[n]["pid"]) for n in ("p1", "q1")}
    for n in kernels:  # a clock in each guest, in its own tmpfs: did it tick meanwhile?
        sh(
            d,
            n,
            "(while [ ! -e /tmp/halt-clock ]; do date +%s >> /tmp/clock; sleep 1; done) & true",
        )
    assert d.proc is not None
    daemon_pid = d.proc.pid
    with console(d, "q1") as q:
        q.run("echo ready", 60)
        time.sleep(2)
        stopped_at = time.time()
        os.kill(daemon_pid, signal.SIGSTOP)
        tally.faults[f"SIGSTOP {size.sigstop_seconds:g}s"] += 1
        try:
            time.sleep(size.sigstop_seconds)
        finally:
            os.kill(daemon_pid, signal.SIGCONT)
        cont_at = time.time()
        t0 = time.monotonic()
        try:
            q.run("echo back-$((1+2))", 60)
            tally.figures["SIGSTOP: attached console answers after SIGCONT, s"] = round(
                time.monotonic() - t0, 2
            )
        except (TimeoutError, EOFError) as e:
            tally.once("wrong", f"SIGSTOP: q1's attached console did not come back: {e}")
    try:
        ticks = wait_for(
            "balancer ticks after SIGCONT", lambda: memory_log(d.layout, "tick", cont_at), 30, 0.5
        )
        tally.figures["SIGSTOP: first balancer tick after SIGCONT, s"] = round(
            ticks[0]["t"] - cont_at, 2
        )
    except AssertionError:  # wait_for's timeout
        tally.once("wrong", "SIGSTOP: the balancer logged no tick within 30 s of SIGCONT")
    time.sleep(5)
    before = memory_log(d.layout, "tick", stopped_at - 10)
    acts = memory_log(d.layout, "act", cont_at)
    failed = [a for a in acts if not a.get("ok", True)]
    say(
        f"  balancer after SIGCONT: {len(acts)} actions in 5 s ({len(failed)} failed), "
        f"{len([t for t in before if t['t'] > cont_at])} ticks"
    )
    if failed:
        tally.once(
            "notes", f"SIGSTOP: {len(failed)} balancer actions failed after SIGCONT: {failed[:2]}"
        )
    ls = check_fleet(d, tally, "after SIGSTOP")
    for n, p in kernels.items():
        if ls[n].get("pid") != p:
            tally.once(
                "lost", f"SIGSTOP: {n} was pid {p}, is {ls[n]['state']} pid {ls[n].get('pid')}"
            )
    for kind in ("panic", "crashed", "oom"):
        rows = read_db(
            d.layout,
            "SELECT machine, detail FROM events WHERE kind = ? AND ts > ?",
            kind,
            stopped_at,
        )
        for machine_name, detail in rows:
            tally.once("wrong", f"SIGSTOP: {machine_name}: {kind} {detail[:200]}")
    for n in kernels:
        clock = [
            int(x) for x in sh(d, n, "touch /tmp/halt-clock; cat /tmp/clock").split() if x.isdigit()
        ]
        ticked = [t for t in clock if stopped_at + 1 < t < cont_at - 1]
        if len(ticked) < size.sigstop_seconds / 3:
            tally.once(
                "wrong",
                f"SIGSTOP: {n}'s clock ticked {len(ticked)} times in the "
                f"{size.sigstop_seconds:g} s the daemon was stopped",
            )
    printed = printer.stop(d)
    account(d, printer, printed, work, tally, "SIGSTOP")
    check_logs(d, tally, "after SIGSTOP")
    for tb in log.tracebacks():
        tally.once("wrong", f"SIGSTOP: daemon traceback: {tb}")
    return tally


# ---- fault 4: one guest floods every channel --------------------------------------------
# What "bounded" means for a notify flood of any length (issue 18 asks to say it): a fixed
# amount, whatever the number of datagrams. warden.db may grow by a few rows a minute (gated
# events, counts), not a row per datagram (10,000 rows took 888 KiB: the short flood already
# shows a row per datagram); the daemon's memory by its fixed buffers.
DB_GROWTH_BOUND = 256 << 10  # bytes of warden.db's pages (rows), per flood
RSS_GROWTH_BOUND = 32 << 20  # bytes of daemon peak RSS above its RSS before the flood
ECHO_P99_GOAL_MS = 50.0  # the quiet guest's console echo during the flood


def honeypot_kernel_cached(lay: Layout) -> bool:
    """Link the honeypot kernel into `lay` if the shared cache already has this tree's build
    (tests/support/honeypot.py builds it; this never does: a build takes minutes)."""
    from warden.kernelbuild import build as kbuild

    built = kbuild.cache_dir(lay) / kbuild.gather("honeypot").key
    if not (built / "linux").exists():
        return False
    kbuild.install(lay, "honeypot", built)
    return True


FLOOD_PROFILE = """[profile]
timeout_ms = 200
[proc.version]
filter = { sub = [['\\(buildd@[^)]*\\)', '(debian-kernel@lists.debian.org)']] }
[proc.loadavg]
filter = { sub = [['^', '']] }
"""


def settle_balancer(lay: Layout, name: str, calm: float = 10.0, timeout: float = 120.0) -> None:
    """Until the balancer has not acted on `name` for `calm` seconds."""
    t0 = time.time()

    def calm_now() -> bool:
        since = time.time() - calm
        acts = [a for a in memory_log(lay, "act", since) if a.get("g") == name]
        return since > t0 and not acts

    wait_for(f"the balancer to leave {name} alone", calm_now, timeout, 1.0)


@dataclass
class Percentiles:
    samples: list[float]

    def p(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def echo_samples(c: Console, stop: threading.Event, out: list[float]) -> None:
    """One key every 20 ms on an attached console, the time until its echo, in ms."""
    c.send(b"\x15")
    c.drain()
    n = 0
    while not stop.is_set():
        key = b"x" if n % 2 else b"y"
        t0 = time.perf_counter()
        c.send(key)
        try:
            c.expect(re.escape(key), 10)
        except TimeoutError:
            out.append(10_000.0)
            continue
        out.append((time.perf_counter() - t0) * 1000)
        n += 1
        if n % 40 == 0:
            c.send(b"\x15")  # Ctrl-U: the line never grows long
            time.sleep(0.05)
            c.drain()
        time.sleep(0.02)
    c.send(b"\x15")


def channel_flood(d: DaemonProc, size: Size, work: Path, say: Say = print) -> Tally:
    """fl floods: its console (con0) with 64 KiB blocks, the notify socket with
    `size.notify_datagrams` writes to /proc/mconsole, and on the honeypot kernel its tty log
    (every console byte) and disguise requests (reading two filtered /proc files in a loop).
    fl is driven from its ssl0, so its console flood never hides the answers. Meanwhile qt
    (stock kernel) prints on ssl0 and has a console attached on con0, where a key is typed
    every 20 ms and its echo timed; the balancer keeps it in its ticks."""
    tally = Tally()
    log = DaemonLog(d)
    honeypot = honeypot_kernel_cached(d.layout)
    prof = work / "flood-profile.toml"
    prof.write_text(FLOOD_PROFILE)
    extra = f'kernel = "honeypot"\ntty_log = true\ndisguise = "{prof}"\n' if honeypot else ""
    d.apply(OWNER + machine("fl", True, serial=1) + extra + machine("qt", True, serial=1))
    wait_states(d, {"fl": "running", "qt": "running"})
    say(
        f"flood: fl on the {'honeypot' if honeypot else 'stock'} kernel"
        + ("" if honeypot else " (no honeypot kernel in the cache: no tty log, no disguise)")
    )
    printer = Printer("qt", per_tick=1, pause_us=20_000)
    printer.start(d)
    assert d.proc is not None
    dpid = d.proc.pid
    sh(
        d,
        "fl",
        f"yes {BLOB_LINE.decode()} | head -c 65536 > /tmp/blob",
        line="ssl0",
    )
    rss0, db0 = proc_status_kib(dpid, "VmRSS"), db_bytes(d.layout)
    files0 = db_file_bytes(d.layout)
    events0 = last_event_id(d.layout)
    reset_peak_rss(dpid)
    n = size.notify_datagrams
    floods = [
        # every block is counted by the guest: printed bytes are known
        "(b=0; while [ ! -e /tmp/stop ]; do cat /tmp/blob; b=$((b+1)); done > /dev/tty0; "
        "echo $b > /tmp/blocks) &",
        f"(i=0; while [ $i -lt {n} ]; do echo n$i > /proc/mconsole; i=$((i+1)); done; "
        "echo $i > /tmp/notified) &",
    ]
    if honeypot:
        floods.append(
            "(while [ ! -e /tmp/stop ]; do cat /proc/version /proc/loadavg > /dev/null; done) &"
        )
    rss_peak = [rss0]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            rss_peak.append(proc_status_kib(dpid, "VmRSS"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    echoes: list[float] = []
    with console(d, "qt") as q:
        q.run("echo ready", 60)
        # A freshly booted guest is squeezed by the balancer, and an unplug step stalls it for
        # tens of ms (UML is not preemptive): both measurements start once it is left alone.
        settle_balancer(d.layout, "qt")
        quiet: list[float] = []  # the anchor: the same console before the flood
        done = threading.Event()
        threading.Timer(5.0, done.set).start()
        echo_samples(q, done, quiet)
        tally.figures["flood: qt echo p99 ms before the flood"] = round(
            Percentiles(quiet).p(0.99), 2
        )
        t0 = time.monotonic()
        sh(d, "fl", " ".join(floods) + " true", line="ssl0")
        tally.faults["flood: console, notify" + (", tty log, disguise" if honeypot else "")] += 1
        typist_stop = threading.Event()
        typist = threading.Thread(target=echo_samples, args=(q, typist_stop, echoes))
        typist.start()
        try:
            wait_for(
                f"{n} notify writes",
                lambda: sh(d, "fl", "cat /tmp/notified 2>/dev/null", line="ssl0").strip().isdigit(),
                max(120.0, n / 200),
                2.0,
            )
        except AssertionError as e:  # wait_for's timeout
            tally.once("notes", f"flood: {e}")
        flood_s = time.monotonic() - t0
        typist_stop.set()
        typist.join()
        sh(d, "fl", "touch /tmp/stop", line="ssl0")
        try:
            q.run("echo after", 60)
        except (TimeoutError, EOFError) as e:
            tally.once("wrong", f"flood: qt's console did not answer after the flood: {e}")
    stop.set()
    sampler.join()
    hwm = proc_status_kib(dpid, "VmHWM")
    time.sleep(2)
    blocks = int(
        wait_for(
            "fl's console flood to end",
            lambda: sh(d, "fl", "cat /tmp/blocks 2>/dev/null", line="ssl0").strip() or None,
            60,
            1.0,
        )
    )
    notified = sh(d, "fl", "cat /tmp/notified", line="ssl0").strip()
    db1, files1 = db_bytes(d.layout), db_file_bytes(d.layout)
    rows = read_db(
        d.layout, "SELECT kind, COUNT(*) FROM events WHERE id > ? GROUP BY kind", events0
    )
    say(
        f"  flood lasted {flood_s:.1f}s; fl wrote {notified} notifies, {blocks} console blocks "
        f"({blocks * 65536 >> 20} MiB); events stored meanwhile: {dict(rows)}"
    )
    pct = Percentiles(echoes)
    tally.figures.update(
        {
            "flood: seconds": round(flood_s, 1),
            "flood: notify datagrams written": float(notified or 0),
            "flood: qt echo samples": float(len(echoes)),
            "flood: qt echo p50 ms": round(pct.p(0.5), 2),
            "flood: qt echo p99 ms": round(pct.p(0.99), 2),
            "flood: qt echo max ms": round(max(echoes, default=float("nan")), 2),
            "flood: daemon RSS before, MiB": round(rss0 / 1024, 1),
            "flood: daemon peak RSS (VmHWM), MiB": round(max(hwm, *rss_peak) / 1024, 1),
            "flood: warden.db growth, KiB": round((db1 - db0) / 1024, 1),
            "flood: warden.db and WAL files growth, KiB": round((files1 - files0) / 1024, 1),
            "flood: events stored": float(sum(c for _, c in rows)),
        }
    )
    peak = max(hwm, *rss_peak) * 1024
    if db1 - db0 > DB_GROWTH_BOUND:
        tally.over.append(
            f"flood: warden.db grew {(db1 - db0) >> 10} KiB for {notified} datagrams "
            f"(bound {DB_GROWTH_BOUND >> 10} KiB whatever their number)"
        )
    if peak - rss0 * 1024 > RSS_GROWTH_BOUND:
        tally.over.append(
            f"flood: the daemon's peak RSS rose {(peak >> 20) - (rss0 >> 10)} MiB "
            f"(bound {RSS_GROWTH_BOUND >> 20} MiB)"
        )
    # The echo p99 is a speed claim: benchmarks/faults.py holds it to ECHO_P99_GOAL_MS, with
    # the same console before the flood as its anchor; a test on a shared host does not.
    acts = [a for a in memory_log(d.layout, "act", time.time() - flood_s - 2) if a.get("g") == "qt"]
    tally.figures["flood: balancer actions on qt during the flood"] = float(len(acts))
    ticks = memory_log(d.layout, "tick", time.time() - flood_s - 2)
    with_qt = [t for t in ticks if "qt" in t.get("g", {})]
    tally.figures["flood: balancer ticks with qt per s"] = round(len(with_qt) / flood_s, 2)
    if len(with_qt) < flood_s / 4:
        tally.once(
            "wrong",
            f"flood: the balancer ticked qt {len(with_qt)} times in {flood_s:.0f}s (interval 1 s)",
        )
    printed = printer.stop(d)
    account(d, printer, printed, work, tally, "flood (quiet guest)")
    if honeypot:
        st = ApiClient(d.layout).get("/honeypot/fl")
        say(f"  honeypot status of fl: {json.dumps(st)[:400]}")
    ls = check_fleet(d, tally, "after the flood")
    for name in ("fl", "qt"):
        if ls.get(name, {}).get("state") != "running":
            tally.once("lost", f"flood: {name} is {ls.get(name, {}).get('state')}")
    # fl's con0 log is closed first: past the quota only its END counts what was dropped
    d.cli("stop", "fl", check=False)
    _flood_console_accounting(d, blocks, work, tally, say)
    check_logs(d, tally, "after the flood")
    for tb in log.tracebacks():
        tally.once("wrong", f"flood: daemon traceback: {tb}")
    return tally


BLOB_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"  # `yes` prints it
BLOCK_LINES = 65536 // (len(BLOB_LINE) + 1)  # 64-byte lines: 1024 per 64 KiB block


def _flood_console_accounting(
    d: DaemonProc, blocks: int, work: Path, tally: Tally, say: Say
) -> None:
    """fl printed `blocks` blocks of BLOCK_LINES 64-byte lines on con0: the lines its log holds
    plus what its records count as dropped must add up to that (a quota may drop output, never
    silently). Counted in lines: the tty adds a "\r" to each, the log holds what it read."""
    wanted = blocks * BLOCK_LINES
    out = work / "fl-con0.raw"
    out.unlink(missing_ok=True)
    d.cli("logs", "export", "fl:con0", "--format", "raw", "-o", str(out))
    logged = out.read_bytes().count(BLOB_LINE + b"\r\n")
    out.unlink()
    drops = log_drop_records(d, "fl", "con0")
    counted = dropped_total(drops)
    counted_lines = counted // (len(BLOB_LINE) + 2)
    missing = max(0, wanted - logged - counted_lines - 2 * len(drops))
    line = len(BLOB_LINE) + 1
    say(
        f"  fl con0: printed {wanted} lines ({wanted * line} bytes), logged {logged}, counted "
        f"as dropped ~{counted_lines} ({counted} bytes in {len(drops)} records), "
        f"unaccounted {missing}"
    )
    tally.figures["flood: fl console bytes printed"] = float(wanted * line)
    tally.figures["flood: fl console bytes logged"] = float(logged * line)
    tally.figures["flood: fl console bytes counted as dropped"] = float(counted)
    tally.printed += wanted * line
    if missing:
        tally.unlogged += missing * line
        tally.notes.append(
            f"flood: fl printed {wanted} lines on con0; the log holds {logged} and counts "
            f"~{counted_lines} as dropped: {missing} vanished unrecorded"
        )
