"""Claim: one daemon runs many idle guests cheaply (issue 19: 500 minimal 64M guests on this
2-core, 24 GiB machine).

Boots N idle minimal guests (SCALE_N, default 50; mem=SCALE_MEM, default 64M) from one fleet
file through one daemon, boots admitted by CPU (SCALE_BOOT_SLOTS=1000 boots them all at once),
and reports each figure of the issue's 500-guest goal, one RESULT line each:

- boot: the time until every console answered a command (goal <= 5 min at 500), guests that
  failed to come up (goal 0), the guests' CPU per boot (their cgroups' usage_usec);
- idle cost once settled (SCALE_SETTLE s after the last console answered, then a window of
  SCALE_WINDOW s): the guests' CPU (the instance group's cpu.stat), the daemon's CPU
  (/proc/PID/stat utime+stime) and the guests' wake-ups (context switches of every thread of
  every process in the guests' groups), per guest; the load average;
- per-console answer latency, all consoles at once: each console is attached first, then
  every command is sent together and each console's own time from its send to its answer is
  kept (goal p99 <= 1 s);
- `warden ls` (the CLI, a fresh process each time): median and max of 5 (goal <= 200 ms);
- panics and losses: guests whose kernel log says "Kernel panic", or that panicked, crashed,
  stopped or timed out by the daemon's events, or are not running at the end (goal 0);
- host memory per idle guest by PSS (how it is counted: `guest_memory`), against ten raw
  `linux.uml` guests (tests/support/rawboot.py; SCALE_RAW, 0 skips them) counted the same
  way (goal <= 15 MB); and the drop in MemAvailable per guest, as before;
- the memory balancer throughout: its log's ticks (the largest gap between two), its actions
  and what they moved, and its state at the end (GET /v1/memory).

A watchdog stops the run (the daemon's close kills every guest) when MemAvailable falls
under SCALE_MIN_AVAIL_GIB (2). SCALE_KEEP=1 keeps the run's WARDEN_HOME.
"""

import asyncio
import ctypes
import json
import math
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from _common import drop_home, median, result  # first: puts the repository root on sys.path

# isort: split
from tests.support.daemon import WARDEN, DaemonProc, kill_home
from tests.support.rawboot import RawGuest
from warden.images import minimal
from warden.images.store import ImageStore
from warden.memory.record import memory_dir, read_log
from warden.paths import Layout, layout
from warden.progress import NullProgress
from warden.units import parse_size

N = int(os.environ.get("SCALE_N", "50"))
MEM = os.environ.get("SCALE_MEM", "64M")
# [host] boot_slots for the run: unset/0 = boots admitted by CPU (daemon/admission.py);
# a large number (1000) = every boot at once, as before admission
BOOT_SLOTS = int(os.environ.get("SCALE_BOOT_SLOTS", "0"))
SETTLE = float(os.environ.get("SCALE_SETTLE", "30"))
WINDOW = float(os.environ.get("SCALE_WINDOW", "30"))
RAW = int(os.environ.get("SCALE_RAW", "10"))
MIN_AVAIL = float(os.environ.get("SCALE_MIN_AVAIL_GIB", "2")) * (1 << 30)
LS_RUNS = 5
SOLO = 20  # consoles asked one at a time after the all-at-once round
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNIFIED = Path("/sys/fs/cgroup/unified")
SWITCHES = re.compile(r"(?m)^(?:non)?voluntary_ctxt_switches:\s+(\d+)")
# the kinds of the daemon's events that mean a guest panicked, died or was given up on
LOSS_EVENTS = (
    "panic",
    "crashed",
    "boot-timeout",
    "powered-off",
    "rebooting",
    "rebooted",
    "restart-scheduled",
    "stop-escalated",
    "kill-slow",
)


# ---- the host ---------------------------------------------------------------------------------
def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/meminfo")


def mem_available() -> int:
    return meminfo("MemAvailable")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's sizes in bytes ({} if the process is gone)."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def pss(pid: int) -> int:
    return rollup(pid).get("Pss", 0)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def instance_cpu(instance: str) -> float:
    """CPU seconds every guest of the home used so far (the instance group's cpu.stat)."""
    text = (UNIFIED / f"warden-{instance}/cpu.stat").read_text()
    return int(text.split("usage_usec ", 1)[1].split()[0]) / 1e6


def guest_groups(instance: str) -> list[Path]:
    """The home's guest groups in the unified hierarchy (one directory per guest)."""
    top = UNIFIED / f"warden-{instance}"
    return sorted(g for g in top.iterdir() if g.is_dir()) if top.exists() else []


def group_pids(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def context_switches(pids: list[int]) -> dict[int, int]:
    """Voluntary + involuntary context switches of every thread, by thread id."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                text = (task / "status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            out[int(task.name)] = sum(int(x) for x in SWITCHES.findall(text))
    return out


class MemoryWatch(threading.Thread):
    """Interrupts the run when the host's MemAvailable falls under `floor`; keeps the lowest."""

    def __init__(self, floor: float):
        super().__init__(daemon=True)
        self.floor = floor
        self.lowest = mem_available()
        self.tripped = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            avail = mem_available()
            self.lowest = min(self.lowest, avail)
            if avail < self.floor and not self.tripped:
                self.tripped = True
                print(
                    f"!! MemAvailable {avail / (1 << 30):.2f} GiB < "
                    f"{self.floor / (1 << 30):.1f} GiB: stopping the run",
                    flush=True,
                )
                os.kill(os.getpid(), signal.SIGINT)  # the main thread's finally closes the daemon


# ---- the daemon's API -------------------------------------------------------------------------
async def _api(sock: Path, method: str, path: str, body: Any = None) -> Any:
    conn = aiohttp.UnixConnector(path=str(sock))
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        async with s.request(method, f"http://w/v1/{path}", json=body) as r:
            return await r.json()


def api(sock: Path, path: str, method: str = "GET", body: Any = None) -> Any:
    """One request to the daemon (cheaper than a CLI process, which polling would pay often)."""
    return asyncio.run(_api(sock, method, path, body))


def all_events(sock: Path) -> list[dict[str, Any]]:
    """Every event of the run (the API answers 1000 at a time)."""
    out: list[dict[str, Any]] = []
    while True:
        page = api(sock, f"events?since={out[-1]['id'] if out else 0}")
        if not page:
            return out
        out += page


# ---- 1. the boot storm ------------------------------------------------------------------------
@dataclass
class Boot:
    up: float = 0.0  # every boot over (running or failed), from the apply
    answered: float = 0.0  # every running guest's console answered a command, from the apply
    failed: dict[str, Any] = field(default_factory=dict)
    cpu_per_boot: float = 0.0
    most_booting: int = 0
    slots_seen: set[int] = field(default_factory=set)


async def _answer_once(sock: Path, names: list[str], tag: str, limit: float) -> dict[str, float]:
    """Attach to every console, then send one command to all at once; each console's own
    seconds from its send to its answer (a console that does not answer within `limit` s is
    missing)."""
    conn = aiohttp.UnixConnector(path=str(sock), limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        sockets = await asyncio.gather(
            *(s.ws_connect(f"http://w/v1/machines/{n}/lines/con0/attach") for n in names)
        )

        async def one(name: str, ws: aiohttp.ClientWebSocketResponse) -> tuple[str, float]:
            want = f"{tag}-42-{name}".encode()  # the typed `$((40+2))` echoes as itself
            t0 = time.monotonic()
            await ws.send_bytes(f"echo {tag}-$((40+2))-{name}\n".encode())
            buf = b""
            try:
                async with asyncio.timeout(limit):
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            buf += msg.data
                            if want in buf:
                                took = time.monotonic() - t0
                                await ws.close()
                                return name, took
            except TimeoutError:
                await ws.close()
            return name, float("nan")

        # every console attached first: the commands then go out together
        done = await asyncio.gather(*(one(n, ws) for n, ws in zip(names, sockets, strict=True)))
    return {n: t for n, t in done if t == t}


def answer(sock: Path, names: list[str], tag: str, limit: float) -> dict[str, float]:
    return asyncio.run(_answer_once(sock, names, tag, limit))


def boot_storm(d: DaemonProc, lay: Layout, fleet: str, names: list[str]) -> Boot:
    b = Boot()
    cpu0 = instance_cpu(lay.instance) if (UNIFIED / f"warden-{lay.instance}").exists() else 0.0
    t0 = time.monotonic()
    d.apply(fleet)
    last_print = 0.0
    while True:
        machines = {m["name"]: m for m in api(lay.socket, "machines")}
        states = [m["state"] for m in machines.values()]
        b.most_booting = max(
            b.most_booting,
            sum(1 for m in machines.values() if m["state"] == "starting" and m["pid"]),
        )
        for m in machines.values():
            found = re.search(r"\(limit (\d+) ", m.get("waiting") or "")
            if found:
                b.slots_seen.add(int(found[1]))
        now = time.monotonic() - t0
        if now - last_print >= 15:
            last_print = now
            counts = {s: states.count(s) for s in sorted(set(states))}
            print(
                f"  {now:5.0f} s: {counts}; load {loadavg()}; "
                f"MemAvailable {mem_available() / (1 << 30):.1f} GiB",
                flush=True,
            )
        if len(machines) == len(names) and all(
            s in ("running", "crashed", "stopped") for s in states
        ):
            break  # every boot is over, well or not
        time.sleep(1.0)
    b.up = time.monotonic() - t0
    b.failed = {
        n: m.get("last_exit") for n, m in machines.items() if m["state"] in ("crashed", "stopped")
    }
    # "up" is the kernel's mconsole, early in a boot; a console that answers a command is a
    # booted guest: the storm's figure is the time until every one answers
    answered = answer(lay.socket, [n for n in names if n not in b.failed], "boot", 300)
    b.answered = time.monotonic() - t0
    for n in names:
        if n not in b.failed and n not in answered:
            b.failed[n] = "its console never answered"
    b.cpu_per_boot = (instance_cpu(lay.instance) - cpu0) / N
    print(
        f"boot: {N - len(b.failed)} of {N} up after {b.up:.1f} s, every console answered "
        f"{b.answered:.1f} s after the apply; {len(b.failed)} failed; the guests' CPU per boot "
        f"{b.cpu_per_boot:.2f} s; the most launched and not up at once {b.most_booting}; "
        f"boot slots: {BOOT_SLOTS or 'by CPU'} (seen: {sorted(b.slots_seen)}); load {loadavg()}",
        flush=True,
    )
    if b.failed:
        print(f"  failed: {dict(list(b.failed.items())[:20])}", flush=True)
    return b


# ---- 2. idle cost -----------------------------------------------------------------------------
@dataclass
class Idle:
    guests_cpu: float  # fraction of one CPU, per guest
    daemon_cpu: float  # fraction of one CPU, per guest
    wakeups: float  # context switches per guest per second
    load: str
    guests_total: float  # fraction of one CPU, all guests


def idle_cost(
    instance: str, groups: list[Path], daemon_pid: int | None, window: float, what: str
) -> Idle:
    """The guests' CPU, the daemon's and the guests' wake-ups over `window` seconds."""
    n = len(groups)
    pids = [p for g in groups for p in group_pids(g)]

    def daemon() -> float:
        return proc_cpu(daemon_pid) if daemon_pid else 0.0

    sw0, g0, d0, t0 = context_switches(pids), instance_cpu(instance), daemon(), time.monotonic()
    time.sleep(window)
    sw1, g1, d1, t1 = context_switches(pids), instance_cpu(instance), daemon(), time.monotonic()
    dt = t1 - t0
    switches = sum(sw1[t] - sw0[t] for t in sw1.keys() & sw0.keys())
    idle = Idle(
        guests_cpu=(g1 - g0) / dt / n,
        daemon_cpu=(d1 - d0) / dt / n,
        wakeups=switches / dt / n,
        load=loadavg(),
        guests_total=(g1 - g0) / dt,
    )
    print(
        f"{what} idle, {n} guests over {dt:.0f} s: the guests used "
        f"{idle.guests_total * 100:.1f}% of a CPU ({idle.guests_cpu * 1e3:.2f} ms/s per guest)"
        + (
            f", the daemon {idle.daemon_cpu * n * 100:.1f}% ({idle.daemon_cpu * 1e3:.2f} ms/s "
            "per guest)"
            if daemon_pid
            else ""
        )
        + f"; {idle.wakeups:.1f} context switches per guest per second ({len(sw1)} threads in "
        f"{len(pids)} processes); load average {idle.load}",
        flush=True,
    )
    return idle


# ---- 3. console latency -----------------------------------------------------------------------
def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value at least p% of the values are <= to."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def console_latency(lay: Layout, names: list[str], daemon_pid: int) -> dict[str, float]:
    """All consoles at once (the figure), then a few one at a time: what one answer costs
    when nothing else is asked, to tell a slow path from a queue; and the CPU the round took
    (the guests' and the daemon's, attaching included), per console."""
    g0, d0 = instance_cpu(lay.instance), proc_cpu(daemon_pid)
    lat = answer(lay.socket, names, "lat", 60)
    g1, d1 = instance_cpu(lay.instance), proc_cpu(daemon_pid)
    xs = list(lat.values()) or [float("inf")]
    out = {
        "p50": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "max": max(xs),
        "missing": float(len(names) - len(lat)),
    }
    alone = [t for n in names[:SOLO] for t in answer(lay.socket, [n], "solo", 60).values()]
    print(
        f"consoles, all {len(names)} at once: p50 {out['p50'] * 1000:.0f} ms, p99 "
        f"{out['p99'] * 1000:.0f} ms, max {out['max'] * 1000:.0f} ms; "
        f"{int(out['missing'])} never answered; CPU per console: guest "
        f"{(g1 - g0) / len(names) * 1000:.1f} ms, daemon {(d1 - d0) / len(names) * 1000:.1f} ms; "
        f"one at a time ({len(alone)}): median "
        f"{median(alone or [float('nan')]) * 1000:.0f} ms, max "
        f"{max(alone or [float('nan')]) * 1000:.0f} ms",
        flush=True,
    )
    return out


# ---- 4. warden ls -----------------------------------------------------------------------------
def ls_times(lay: Layout) -> list[float]:
    """Wall time of `warden ls` (a new CLI process, as a user runs it) and, for what limits it,
    of the API request it makes."""
    cli, req = [], []
    for _ in range(LS_RUNS):
        t = time.monotonic()
        subprocess.run([*WARDEN, "ls"], env={**os.environ}, capture_output=True, check=True)
        cli.append(time.monotonic() - t)
        t = time.monotonic()
        api(lay.socket, "machines")
        req.append(time.monotonic() - t)
    t = time.monotonic()
    subprocess.run([*WARDEN, "--help"], env={**os.environ}, capture_output=True, check=True)
    bare = time.monotonic() - t
    print(
        f"`warden ls`: median {median(cli) * 1000:.0f} ms, max {max(cli) * 1000:.0f} ms "
        f"(the GET /v1/machines inside it: median {median(req) * 1000:.0f} ms; "
        f"`warden --help`, the CLI's start alone: {bare * 1000:.0f} ms)",
        flush=True,
    )
    return cli


# ---- 5. panics and losses ---------------------------------------------------------------------
def panics(lay: Layout, names: list[str]) -> dict[str, Any]:
    api(lay.socket, "logs/flush", "POST")  # the kernel logs written out
    in_log = [
        n
        for n in names
        if any(
            b"Kernel panic" in p.read_bytes()
            for p in (lay.machines / n / "logs").glob("kernel-*.log")
        )
    ]
    events = all_events(lay.socket)
    kinds: dict[str, int] = {}
    lost: set[str] = set()
    for e in events:
        if e["kind"] in LOSS_EVENTS:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            lost.add(e["machine"])
    machines = {m["name"]: m for m in api(lay.socket, "machines")}
    not_running = [n for n in names if machines.get(n, {}).get("state") != "running"]
    rebooted = [n for n in names if (machines.get(n, {}).get("boot") or 0) > 1]
    bad = set(in_log) | lost | set(not_running) | set(rebooted)
    print(
        f"panics and losses: {len(in_log)} kernel logs say 'Kernel panic'; events "
        f"{kinds or 'none'} "
        f"({len(events)} events read); {len(not_running)} not running now, {len(rebooted)} "
        f"booted more than once; {len(bad)} guests in all"
        + (f": {sorted(bad)[:20]}" if bad else ""),
        flush=True,
    )
    return {"guests": len(bad), "panic_logs": len(in_log), "events": kinds}


# ---- 6. host memory per guest by PSS ----------------------------------------------------------
@dataclass
class GroupMemory:
    pss: int = 0  # sum of Pss over the group's processes
    pss_shmem: int = 0  # the part of it that is shmem: the mapped pages of the RAM file
    ram_file: int = 0  # the RAM file's allocated size (its tmpfs pages, mapped or not)
    processes: int = 0  # address spaces, in fact (address_spaces)

    @property
    def total(self) -> int:
        """What the guest holds: its processes' PSS, with the RAM file counted whole (every
        page the file holds, mapped or not) instead of only its mapped pages."""
        return self.pss - self.pss_shmem + self.ram_file


def shared_deleted_maps(pid: int) -> set[tuple[int, int]]:
    """(dev, inode) of the unlinked files the process maps shared, from /proc/PID/maps."""
    out: set[tuple[int, int]] = set()
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[1][3] == "s" and parts[5].endswith("(deleted)"):
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            out.add((os.makedev(major, minor), int(parts[4])))
    return out


def ram_files(pids: list[int]) -> dict[tuple[int, int], int]:
    """UML's RAM file (made with O_TMPFILE in TMPDIR, a tmpfs, and mapped MAP_SHARED): the
    unlinked files the processes hold open and map shared, by (dev, inode), with their
    allocated bytes (st_blocks: the tmpfs pages the file holds, mapped or not)."""
    out: dict[tuple[int, int], int] = {}
    for pid in pids:
        mapped = shared_deleted_maps(pid)
        if not mapped:
            continue
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in mapped and st.st_nlink == 0:
                out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


_libc = ctypes.CDLL(None, use_errno=True)
SYS_KCMP, KCMP_VM = 312, 1  # x86_64; kcmp(2)


def same_mm(a: int, b: int) -> bool:
    """Whether two processes share one address space (UML's kernel clones helpers with
    CLONE_VM: each is a process of its own in cgroup.procs, with the same smaps)."""
    return bool(_libc.syscall(SYS_KCMP, a, b, KCMP_VM, 0, 0) == 0)


def address_spaces(pids: list[int]) -> list[int]:
    """One pid per address space: PSS is per address space, and counting a shared one once
    per process would count its pages several times."""
    first: list[int] = []
    for pid in pids:
        if not any(same_mm(pid, other) for other in first):
            first.append(pid)
    return first


def group_memory(pids: list[int]) -> GroupMemory:
    m = GroupMemory()
    for pid in address_spaces(pids):
        r = rollup(pid)
        if r:
            m.pss += r.get("Pss", 0)
            m.pss_shmem += r.get("Pss_Shmem", 0)
            m.processes += 1
    m.ram_file = sum(ram_files(pids).values())
    return m


def mapped_ram_file(pids: list[int]) -> int:
    """Check of Pss_Shmem: the Pss of the mappings of the group's RAM file, from the full
    smaps (slow: for one guest only)."""
    inodes = {ino for _, ino in ram_files(pids)}
    total, current = 0, False
    for pid in address_spaces(pids):
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
                current = len(parts) >= 5 and "s" in parts[1] and int(parts[4]) in inodes
            elif current and parts[0] == "Pss:":
                total += int(parts[1]) * 1024
    return total


def memory_of_groups(groups: list[Path], what: str) -> float:
    """MB per guest (the mean over `groups`), printed with its parts."""
    ms = [group_memory(group_pids(g)) for g in groups]
    n = len(ms)
    if not n:
        print(f"{what}: no guest group to count", flush=True)
        return float("nan")
    mean = {k: sum(getattr(m, k) for m in ms) / n / 1e6 for k in ("pss", "pss_shmem", "ram_file")}
    total = sum(m.total for m in ms) / n / 1e6
    procs = sum(m.processes for m in ms) / n
    check = mapped_ram_file(group_pids(groups[0])) / 1e6
    first = ms[0]
    print(
        f"{what}, {n} guests: {total:.1f} MB each = PSS {mean['pss']:.1f} MB - its RAM-file "
        f"part (Pss_Shmem) {mean['pss_shmem']:.1f} MB + the RAM file's tmpfs pages "
        f"{mean['ram_file']:.1f} MB; {procs:.1f} address spaces each (check, one guest: Pss_Shmem "
        f"{first.pss_shmem / 1e6:.1f} MB, the RAM file's mappings in smaps {check:.1f} MB)",
        flush=True,
    )
    return total


def raw_guests(lay: Layout, image: Path, n: int, settle: float) -> tuple[float, Idle]:
    """Boot `n` raw linux.uml guests (the same kernel, image and memory; no daemon, no
    balancer, no jail), wait for each prompt, let them settle, and count their memory and
    idle cost like warden's."""
    work = lay.home / "raw"
    work.mkdir(exist_ok=True)
    guests = [
        RawGuest(lay, image, work / f"r{i}.cow", memory=parse_size(MEM), name=f"raw{i}")
        for i in range(n)
    ]
    try:
        for g in guests:
            g.start()
        for g in guests:
            g.wait_prompt(120)
        time.sleep(settle)
        groups = [g.cg.path for g in guests]
        idle = idle_cost(lay.instance, groups, None, WINDOW, "raw linux.uml")
        return memory_of_groups(groups, "raw linux.uml"), idle
    finally:
        for g in guests:
            g.close()


# ---- 7. the balancer --------------------------------------------------------------------------
def balancer_activity(lay: Layout, since: float) -> dict[str, Any]:
    """What the memory balancer's log shows from `since` on (docs/formats/memlog.md)."""
    ticks: list[float] = []
    acts: dict[str, list[dict[str, Any]]] = {}
    evs: dict[str, int] = {}
    oom_signals = 0
    for rec in read_log(memory_dir(lay.home) / "log", since):
        k = rec.get("k")
        if k == "tick":
            ticks.append(rec["t"])
            oom_signals += sum(
                1 for g in rec.get("g", {}).values() if {"oom", "oom-risk"} & set(g.get("s", []))
            )
        elif k == "act":
            acts.setdefault(rec.get("op", "?"), []).append(rec)
        elif k == "ev":
            evs[rec.get("what", "?")] = evs.get(rec.get("what", "?"), 0) + 1
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    unplugs = acts.get("unplug", [])
    ms = [a["ms"] for a in unplugs if isinstance(a.get("ms"), int | float)]
    snap = api(lay.socket, "memory")
    out = {
        "ticks": len(ticks),
        "span": (ticks[-1] - ticks[0]) if ticks else 0.0,
        "max_gap": max(gaps) if gaps else float("inf"),
        "median_gap": median(gaps) if gaps else float("inf"),
        "acts": {op: len(v) for op, v in acts.items()},
        "failed_acts": sum(1 for v in acts.values() for a in v if a.get("ok") is False),
        "unplugged_mib": sum(a.get("kib", 0) for a in unplugs if a.get("ok")) / 1024,
        "unplug_ms": (median(ms), max(ms)) if ms else None,
        "events": evs,
        "oom_signals": oom_signals,
        "plugged_mib": snap["plugged"] / (1 << 20),
        "budget_mib": snap["effective_budget"] / (1 << 20),
        "over_budget_ticks": snap["over_budget_ticks"],
    }
    print(
        f"balancer: {out['ticks']} ticks over {out['span']:.0f} s (gap median "
        f"{out['median_gap']:.2f} s, max {out['max_gap']:.2f} s); actions {out['acts']} "
        f"({out['failed_acts']} failed), {out['unplugged_mib']:.0f} MiB unplugged"
        + (
            f" (step median {out['unplug_ms'][0]:.0f} ms, max {out['unplug_ms'][1]:.0f} ms)"
            if out["unplug_ms"]
            else ""
        )
        + f"; events {evs}; oom signals {oom_signals}; now {out['plugged_mib']:.0f} MiB plugged "
        f"({out['plugged_mib'] / N:.1f} per guest) of a budget of {out['budget_mib']:.0f} MiB; "
        f"over budget in {out['over_budget_ticks']} ticks",
        flush=True,
    )
    return out


# ---- the run ----------------------------------------------------------------------------------
def fleet_text(names: list[str]) -> str:
    host = f"[host]\nboot_slots = {BOOT_SLOTS}\n" if BOOT_SLOTS else ""
    return (
        host
        + '[[owner]]\nname = "bench"\n'
        + "".join(f'[[machine]]\nname = "{n}"\nowner = "bench"\nmemory = "{MEM}"\n' for n in names)
    )


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    names = [f"g{i:03d}" for i in range(N)]
    print(
        f"{N} guests of {MEM}; load {loadavg()}; MemAvailable "
        f"{mem_available() / (1 << 30):.1f} GiB",
        flush=True,
    )
    watch = MemoryWatch(MIN_AVAIL)
    watch.start()
    d = DaemonProc(lay).start()
    try:
        time.sleep(1)
        daemon_pid = json.loads(d.cli("status", "--json").stdout)["pid"]
        idle_daemon = pss(daemon_pid) / 1e6
        before = mem_available()
        since = time.time()
        boot = boot_storm(d, lay, fleet_text(names), names)
        up = [n for n in names if n not in boot.failed]
        time.sleep(SETTLE)  # boot-time allocations settle, the balancer squeezes
        used = before - mem_available()
        status = json.loads(d.cli("status", "--json").stdout)
        daemon_added = pss(daemon_pid) / 1e6 - idle_daemon
        print(
            f"MemAvailable fell {used / N / 1e6:.1f} MB per guest; the daemon's PSS grew "
            f"{daemon_added / N * 1000:.0f} kB per guest; {status['open_fds'] / N:.1f} fds per "
            "guest",
            flush=True,
        )
        idle = idle_cost(lay.instance, guest_groups(lay.instance), daemon_pid, WINDOW, "warden")
        latency = console_latency(lay, up, daemon_pid)
        ls = ls_times(lay)
        per_guest = memory_of_groups(guest_groups(lay.instance), "warden")
        lost = panics(lay, names)
        bal = balancer_activity(lay, since)
    finally:
        d.close()
    try:
        raw, raw_idle = raw_guests(lay, image, RAW, SETTLE) if RAW else (None, None)
    finally:
        kill_home(lay)  # the raw guests' instance group too
    watch.done.set()
    print(f"lowest MemAvailable during the run: {watch.lowest / (1 << 30):.1f} GiB", flush=True)
    drop_home(home, "SCALE_KEEP")
    report(
        boot,
        idle,
        latency,
        ls,
        per_guest,
        raw,
        raw_idle,
        used / N / 1e6,
        daemon_added / N,
        lost,
        bal,
    )


def report(
    boot: Boot,
    idle: Idle,
    latency: dict[str, float],
    ls: list[float],
    per_guest: float,
    raw: float | None,
    raw_idle: Idle | None,
    avail_drop: float,
    daemon_added: float,
    lost: dict[str, Any],
    bal: dict[str, Any],
) -> None:
    g = f"{N} idle guests"
    result(
        f"{g}: every console answered after the apply",
        boot.answered,
        None,
        "<= 300 s at 500",
        "s",
        ok=boot.answered <= 300,
    )
    result(f"{g}: guests failed to boot", len(boot.failed), None, "0", "guests", ok=not boot.failed)
    result(f"{g}: the guests' CPU per boot", boot.cpu_per_boot, None, "report", "s")
    result(
        f"{g}: console answer latency p99 (all at once)",
        latency["p99"],
        None,
        "<= 1 s",
        "s",
        ok=latency["p99"] <= 1.0 and not latency["missing"],
    )
    result(f"{g}: console answer latency p50", latency["p50"], None, "report", "s")
    result(f"{g}: console answer latency max", latency["max"], None, "report", "s")
    result(
        f"{g}: `warden ls` median of {LS_RUNS}",
        median(ls) * 1000,
        None,
        "<= 200 ms",
        "ms",
        ok=median(ls) <= 0.2,
    )
    result(f"{g}: `warden ls` max of {LS_RUNS}", max(ls) * 1000, None, "report", "ms")
    result(
        f"{g}: guests panicked, crashed or lost",
        lost["guests"],
        None,
        "0",
        "guests",
        ok=lost["guests"] == 0,
    )
    result(
        f"{g}: host memory per guest (PSS + RAM file)",
        per_guest,
        raw,
        "<= 15 MB",
        "MB",
        f"{RAW} raw linux.uml counted the same way" if raw else "",
        ok=per_guest <= 15,
    )
    result(
        f"{g}: MemAvailable drop per guest",
        avail_drop,
        raw,
        "report",
        "MB",
        "raw linux.uml by PSS" if raw else "",
    )
    result(f"{g}: daemon memory per guest", max(daemon_added, 0.0), None, "report", "MB")
    raw_name = f"{RAW} raw linux.uml" if raw_idle else ""
    result(
        f"{g}: guests' idle CPU per guest",
        idle.guests_cpu * 100,
        raw_idle.guests_cpu * 100 if raw_idle else None,
        "report",
        "% of a CPU",
        raw_name,
    )
    result(f"{g}: daemon's CPU per idle guest", idle.daemon_cpu * 100, None, "report", "% of a CPU")
    result(
        f"{g}: wake-ups per idle guest",
        idle.wakeups,
        raw_idle.wakeups if raw_idle else None,
        "report",
        "/s",
        raw_name,
    )
    result(f"{g}: load average (1 min) idle", float(idle.load.split()[0]), None, "report", "")
    active = bal["ticks"] > 0 and bal["max_gap"] <= 5.0 and sum(bal["acts"].values()) > 0
    result(
        f"{g}: balancer's largest gap between ticks",
        bal["max_gap"],
        None,
        "active throughout (<= 5 s, and it acted)",
        "s",
        ok=active,
    )
    result(f"{g}: balancer's unplugs", bal["acts"].get("unplug", 0), None, "report", "actions")


if __name__ == "__main__":
    main()
