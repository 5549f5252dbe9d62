"""Claim: the balancer runs >= 2x the guests of static partitioning on the same budget, with
no guest OOM kill or panic, <= 5% median job slowdown, and the budget never exceeded.

Setup (env to change): a memory budget of DENSITY_BUDGET MiB (1024; set through [host]
memory_reserve = MemTotal - budget, the default-budget path, so that a fleet of more floors
than the budget can be written and admission decides at start time). DENSITY_N guests (10)
of 256M each, the peak any of them needs. Each guest alternates idle and a job: fill 128 MiB
of tmpfs in 4 MiB chunks, each chunk checksummed (some work per byte; the fill rate is
reported), re-read it all twice (md5sum), delete it. Jobs run in the foreground of the
guests' consoles, DENSITY_CONCURRENT (2) at a time, each new one on the next idle guest in
turn, for DENSITY_SECONDS (120): staggered phases with the same concurrency in both runs
(how many jobs run at once grows neither with the guests nor when the host is slow). The
two runs go at the same time, each with its own daemon and budget, so that the host's other
load weighs on both alike and the job times compare the memory management.

    static    memory_min = memory: nothing is ever unplugged; admission lets in as many
              guests as the budget holds whole (the anchor: static partitions)
    balancer  memory_min = 0: the balancer as shipped

Both run warden's kernel (the patch series with the OOM hook, built into the cache if
missing; DENSITY_KERNEL=stock runs Debian's instead, whose guests keep what the fastest
growth seen fills in one reaction of the balancer, docs/decisions/
2026-12-07-memory-never-kills.md). Reported besides: the hooks' plug-backs and waits.

Measured for each: guests that fit (running after start-up), jobs completed (with the right
checksum) of those started, median job time (from the guest's clock), OOM kills (vmstat
oom_kill, all guests) and panics (guests that crashed), the peak of the balancer's
sum(plugged) against the budget, and the host-side peak: the sum of the guests' cgroup
memory (sampled every 0.5 s).
"""

import asyncio
import hashlib
import json
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import drop_home, kernel_spec, result

# isort: split
from tests.support.daemon import DaemonProc
from warden.images import minimal
from warden.images.store import ImageStore
from warden.memory.hook import parse_counters
from warden.memory.procfs import parse_meminfo, parse_vmstat
from warden.memory.record import read_log
from warden.paths import layout
from warden.progress import NullProgress
from warden.tasks import spawn

MIB = 1 << 20
BUDGET = int(os.environ.get("DENSITY_BUDGET", "1024")) * MIB
N = int(os.environ.get("DENSITY_N", "10"))
MEM = 256 * MIB
JOB_MIB = 128
CONCURRENT = int(os.environ.get("DENSITY_CONCURRENT", "2"))
JOB_TIMEOUT = 90.0  # ~10x a job on a quiet host; a job whose shell the OOM killer took never ends
SECONDS = float(os.environ.get("DENSITY_SECONDS", "120"))

EXPECTED_MD5 = hashlib.md5(bytes(JOB_MIB * MIB)).hexdigest()

JOB = f"""mount -o remount,size=90% /tmp 2>/dev/null
s=$(cut -d' ' -f1 /proc/uptime)
mkdir -p /tmp/job
i=0
while [ $i -lt {JOB_MIB // 4} ]; do
 dd if=/dev/zero of=/tmp/job/$i bs=1M count=4 2>/dev/null
 md5sum /tmp/job/$i > /dev/null
 i=$((i+1))
done
f=$(cut -d' ' -f1 /proc/uptime)
cat $(ls /tmp/job/* | sort -t/ -k4 -n) | md5sum > /dev/null
m=$(cat $(ls /tmp/job/* | sort -t/ -k4 -n) | md5sum | cut -d' ' -f1)
rm -r /tmp/job
e=$(cut -d' ' -f1 /proc/uptime)
echo "job $s $f $e $m" >> /run/jobs.log"""


def fleet(static: bool, kernel: str) -> str:
    total = parse_meminfo(Path("/proc/meminfo").read_text()).total
    out = '[[owner]]\nname = "bench"\n' + f"[host]\nmemory_reserve = {total - BUDGET}\n"
    for i in range(N):
        out += f'[[machine]]\nname = "d{i}"\nowner = "bench"\nmemory = "{MEM >> 20}M"\n'
        out += f"kernel = {json.dumps(kernel)}\n"
        if static:
            out += f'memory_min = "{MEM >> 20}M"\n'
    return out


def top(d: DaemonProc) -> dict[str, Any]:
    snap: dict[str, Any] = json.loads(d.cli("top", "--json").stdout)
    return snap


class HostSampler(threading.Thread):
    """The guests' cgroup memory, summed, every 0.5 s: the host's side of the budget."""

    def __init__(self, d: DaemonProc):
        super().__init__(daemon=True)
        self.root = Path(f"/sys/fs/cgroup/memory/warden-{d.layout.instance}")
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            total = 0
            for f in self.root.glob("*/memory.usage_in_bytes"):
                try:
                    total += int(f.read_text())
                except (OSError, ValueError):
                    pass
            self.peak = max(self.peak, total)


def settle(d: DaemonProc, static: bool, timeout: float = 240) -> list[str]:
    """Wait until every guest either runs (and, with the balancer, was squeezed) or was
    refused; return the running ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ls = d.ls()
        snap = top(d)
        guests = {g["name"]: g for g in snap["guests"]}
        pending = [n for n, m in ls.items() if m["state"] == "starting"]
        running = sorted(n for n, m in ls.items() if m["state"] == "running")
        ready = all(
            n in guests and not guests[n]["booting"] and (static or guests[n]["plugged"] < MEM // 2)
            for n in running
        )
        if not pending and ready and snap["held"] == 0:
            return running
        time.sleep(1)
    raise RuntimeError(f"guests did not settle: {d.ls()}")


async def drive_jobs(sock: Path, guests: list[str]) -> tuple[int, int]:
    """Run jobs for SECONDS, at most CONCURRENT at once, on the guests in turn (each job in
    the foreground of the guest's console, over the daemon's websocket); (started, ended)."""
    conn = aiohttp.UnixConnector(path=str(sock), limit=0)
    slots = asyncio.Semaphore(CONCURRENT)
    busy: set[str] = set()
    counts = [0, 0]

    async def job(session: aiohttp.ClientSession, g: str, k: int) -> None:
        try:
            ws = await session.ws_connect(f"http://w/v1/machines/{g}/lines/con0/attach")
            await ws.send_bytes(f"sh /run/job.sh; echo job-end-{k}-$((1+1))\n".encode())
            want = f"job-end-{k}-2".encode()
            buf = b""
            async with asyncio.timeout(JOB_TIMEOUT):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        buf = (buf + msg.data)[-4096:]
                        if want in buf:
                            counts[1] += 1
                            break
            await ws.close()
        except (TimeoutError, aiohttp.ClientError) as e:
            print(f"{g}: job {k} did not end: {e!r}", flush=True)
        finally:
            busy.discard(g)
            slots.release()

    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = []
        t_end = time.monotonic() + SECONDS
        k = 0
        while time.monotonic() < t_end:
            await slots.acquire()
            free = [g for g in guests if g not in busy]
            g = free[k % len(free)]
            busy.add(g)
            counts[0] += 1
            tasks.append(spawn(job(session, g, k), f"job:{g}:{k}"))
            k += 1
        await asyncio.gather(*tasks)
    return counts[0], counts[1]


def explain_crash(home: Path, g: str, row: dict[str, Any]) -> None:
    """What a crashed guest's last seconds looked like to the balancer: how it ended, then
    its records from the memory log (ticks, actions, events) in the 15 s before."""
    print(f"{g} crashed: {json.dumps(row.get('last_exit'))}", flush=True)
    recs = list(read_log(home / "memory" / "log"))
    mine = [
        r
        for r in recs
        if r.get("g") == g or (r["k"] == "tick" and isinstance(r.get("g"), dict) and g in r["g"])
    ]
    if not mine:
        return
    end = mine[-1]["t"]
    for r in mine:
        if r["t"] < end - 15:
            continue
        if r["k"] == "tick":
            print(f"  {r['t']:.2f} tick {json.dumps(r['g'][g])} sum {r['plugged']}", flush=True)
        else:
            print(f"  {r['t']:.2f} {json.dumps(r)}", flush=True)


def hook_totals(d: DaemonProc, guests: list[str]) -> tuple[int, int, int]:
    """(plug-backs, waits, timeouts) of the guests' OOM hooks; zeros on Debian's kernel."""
    events = waits = timeouts = 0
    for g in guests:
        r = d.cli("mconsole", g, "oomplug", check=False)
        if r.returncode == 0:
            c = parse_counters(r.stdout.strip())
            events, waits, timeouts = events + c.events, waits + c.waits, timeouts + c.timeouts
    return events, waits, timeouts


def run_phase(static: bool, kernel: str) -> dict[str, Any]:
    name = "static" if static else "balancer"
    h = Path(tempfile.mkdtemp(prefix="wh-", dir="/tmp"))
    lay = layout(h)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    sampler = HostSampler(d)
    out: dict[str, Any] = {"name": name}
    try:
        d.apply(fleet(static, kernel))
        running = settle(d, static)
        out["fit"] = len(running)
        print(f"{name}: {len(running)} of {N} guests fit in {BUDGET >> 20} MiB", flush=True)
        for g in running:
            d.console(g, f"cat > /run/job.sh <<'EOF'\n{JOB}\nEOF\n", timeout=0.3)
        ooms0 = {
            g: parse_vmstat(d.cli("mconsole", g, "proc", "vmstat").stdout).oom_kill for g in running
        }
        sampler.start()
        started, ended = asyncio.run(drive_jobs(lay.socket, running))
        sampler.stop.set()
        jobs: list[float] = []
        fills: list[float] = []
        bad = 0
        for g in running:
            text = d.console(g, "cat /run/jobs.log\n", timeout=0.5)
            for m in re.finditer(r"^job (\S+) (\S+) (\S+) (\w+)\s*$", text, re.M):
                s, f, e, md5 = float(m[1]), float(m[2]), float(m[3]), m[4]
                if md5 != EXPECTED_MD5:
                    bad += 1
                    print(f"{name}: {g}: a job's checksum is {md5}: {m[0]!r}", flush=True)
                    continue
                jobs.append(e - s)
                fills.append(JOB_MIB / max(f - s, 1e-3))
        ls = d.ls()
        ooms = sum(
            parse_vmstat(d.cli("mconsole", g, "proc", "vmstat").stdout).oom_kill - ooms0[g]
            for g in running
            if ls[g]["state"] == "running"
        )
        crashed = [g for g in running if ls[g]["state"] == "crashed"]
        out["hook"] = hook_totals(d, [g for g in running if ls[g]["state"] == "running"])
        for g in crashed:
            explain_crash(h, g, ls[g])
        snap = top(d)
        # The budget's high-water mark from the log too (every tick), besides the daemon's.
        ticks = [r["plugged"] * 1024 for r in read_log(h / "memory" / "log") if r["k"] == "tick"]
        out.update(
            started=started,
            ended=ended,
            completed=len(jobs),
            bad=bad,
            median=statistics.median(jobs) if jobs else float("nan"),
            fill=statistics.median(fills) if fills else float("nan"),
            ooms=ooms,
            panics=len(crashed),
            peak_plugged=max([snap["peak_plugged"], *ticks]),
            over_ticks=snap["over_budget_ticks"],
            host_peak=sampler.peak,
        )
    finally:
        sampler.stop.set()
        d.close()
        d.assert_clean()
        drop_home(h, "DENSITY_KEEP", keep=bool(out.get("panics")))
    print(
        f"{name}: {out['completed']}/{out['started']} jobs completed with the right checksum "
        f"(bad {out['bad']}), median job {out['median']:.2f} s (fill {out['fill']:.0f} MiB/s), "
        f"OOM kills {out['ooms']}, panics {out['panics']}, peak sum(plugged) "
        f"{out['peak_plugged'] >> 20} MiB of {BUDGET >> 20} MiB, host peak "
        f"{out['host_peak'] >> 20} MiB; OOM hooks: {out['hook'][0]} plug-backs, "
        f"{out['hook'][1]} waits, {out['hook'][2]} timeouts",
        flush=True,
    )
    return out


def main() -> int:
    # Both at once, each with its own daemon and budget: whatever else loads the host
    # (other work, the other run) loads both alike, so their job times compare.
    results: dict[bool, dict[str, Any]] = {}
    kernel = kernel_spec("DENSITY_KERNEL")
    print(f"kernel: {kernel}", flush=True)

    def phase(static: bool) -> None:
        results[static] = run_phase(static, kernel)

    threads = [threading.Thread(target=phase, args=(s,)) for s in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(results) != 2:
        raise RuntimeError("a run failed (see above)")
    static, bal = results[True], results[False]
    ratio = bal["fit"] / static["fit"]
    slowdown = bal["median"] / static["median"] - 1
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"density: {bal['fit']} guests vs {static['fit']} static ({ratio:.2f}x); median job "
        f"{bal['median']:.2f} s vs {static['median']:.2f} s ({slowdown * 100:+.1f}%); "
        f"OOM kills {bal['ooms']}, panics {bal['panics']}; budget peak "
        f"{bal['peak_plugged'] >> 20}/{BUDGET >> 20} MiB (host load average {load})"
    )
    ok = (
        ratio >= 2
        and bal["ooms"] == 0
        and bal["panics"] == 0
        and slowdown <= 0.05
        and bal["peak_plugged"] <= BUDGET
        and bal["completed"] == bal["started"]
    )
    result(
        "guests on one memory budget (balancer vs static partitions)",
        bal["fit"],
        static["fit"],
        ">= 2x guests, 0 OOM/panic, <= 5% median job slowdown, budget never exceeded",
        "guests",
        anchor_name="static partitions (memory_min = memory)",
        ok=ok,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
