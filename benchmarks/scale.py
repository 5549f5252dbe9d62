"""Claim: one daemon runs many idle guests cheaply (issue 2: goal 500 on 24 GiB, 2 cores).

Boots N idle minimal guests (SCALE_N, default 50; mem=SCALE_MEM, default 64M; SCALE_KEEP=1
keeps its WARDEN_HOME; SCALE_BOOT_SLOTS=1000 boots them all at once) through one
daemon and reports: host memory per guest (the drop in MemAvailable, divided by N), the
daemon's own memory (PSS) and fds per guest, how long `warden ls` takes, and the time for
every console to answer a command (all N at once, through the daemon's API). The anchor for
memory per guest is the figure measured by hand for raw linux.uml guests (57 MB each, ten
idle busybox guests at mem=64M; shared/guide/uml-facts.md); the goal for supervision cost
is under a tenth of that per guest.
"""

import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import drop_home, result
from tests.support.daemon import WARDEN, DaemonProc
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

N = int(os.environ.get("SCALE_N", "50"))
MEM = os.environ.get("SCALE_MEM", "64M")
# [host] boot_slots for the run: unset/0 = boots admitted by CPU (daemon/admission.py);
# a large number (1000) = every boot at once, as before admission
BOOT_SLOTS = int(os.environ.get("SCALE_BOOT_SLOTS", "0"))
RAW_GUEST_MB = 57.0  # uml-facts.md: ten idle busybox guests, mem=64M, about 57 MB each


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def instance_cpu(instance: str) -> float:
    """CPU seconds every guest of the home used so far (the instance group's cpu.stat)."""
    text = Path(f"/sys/fs/cgroup/unified/warden-{instance}/cpu.stat").read_text()
    return int(text.split("usage_usec ", 1)[1].split()[0]) / 1e6


async def answer_all(sock: Path, names: list[str]) -> float:
    conn = aiohttp.UnixConnector(path=str(sock), limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(name: str) -> None:
            ws = await s.ws_connect(f"http://w/v1/machines/{name}/lines/con0/attach")
            await ws.send_bytes(f"echo answer-$((40+2))-{name}\n".encode())
            want = f"answer-42-{name}".encode()
            buf = b""
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    buf += msg.data
                    if want in buf:
                        break
            await ws.close()

        t0 = time.monotonic()
        await asyncio.gather(*(one(n) for n in names))
        return time.monotonic() - t0


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    names = [f"g{i:03d}" for i in range(N)]
    host = f"[host]\nboot_slots = {BOOT_SLOTS}\n" if BOOT_SLOTS else ""
    fleet = (
        host
        + '[[owner]]\nname = "bench"\n'
        + "".join(f'[[machine]]\nname = "{n}"\nowner = "bench"\nmemory = "{MEM}"\n' for n in names)
    )
    d = DaemonProc(lay).start()
    try:
        time.sleep(1)
        idle_daemon = pss(json.loads(d.cli("status", "--json").stdout)["pid"]) / 1e6
        before = mem_available()
        t0 = time.monotonic()
        d.apply(fleet)
        most_booting = 0
        limits: set[int] = set()  # the admission's slots, as the waiting boots report them
        while True:
            machines = d.ls()
            states = [m["state"] for m in machines.values()]
            most_booting = max(
                most_booting,
                sum(1 for m in machines.values() if m["state"] == "starting" and m["pid"]),
            )
            for m in machines.values():
                found = re.search(r"\(limit (\d+) ", m.get("waiting") or "")
                if found:
                    limits.add(int(found[1]))
            if all(s in ("running", "crashed", "stopped") for s in states):
                break  # every boot is over, well or not
            time.sleep(0.5)
        booted = time.monotonic() - t0
        guests_cpu = instance_cpu(lay.instance)
        bad = {
            n: m.get("last_exit")
            for n, m in machines.items()
            if m["state"] in ("crashed", "stopped")
        }
        print(
            f"{N - len(bad)} guests up, {len(bad)} failed, after {booted:.1f} s (CPU of the "
            f"guests by then {guests_cpu:.1f} s); the most launched and not up at once "
            f"{most_booting}; boot slots: {BOOT_SLOTS or 'by CPU'} (seen: {sorted(limits)})",
            flush=True,
        )
        # "up" is the kernel's mconsole, early in a boot; a console that answers a command
        # is a booted guest: the storm's figure is the time until every one answers
        answer = asyncio.run(answer_all(lay.socket, [n for n in names if n not in bad]))
        settled = time.monotonic() - t0
        guests_cpu = instance_cpu(lay.instance)
        print(
            f"every console answered a command within {answer:.2f} s: {N - len(bad)} booted "
            f"{settled:.1f} s after the fleet was applied, {guests_cpu / N:.2f} s of the "
            "guests' CPU per boot",
            flush=True,
        )
        if bad:
            raise RuntimeError(f"{len(bad)} guests failed to start: {bad}\n{d.log_text()[-2000:]}")
        time.sleep(5)  # let boot-time allocations settle
        used = before - mem_available()
        per_guest = used / N / 1e6
        status = json.loads(d.cli("status", "--json").stdout)
        daemon_pss = pss(status["pid"]) / 1e6
        daemon_added = daemon_pss - idle_daemon
        fds_per_guest = status["open_fds"] / N
        t1 = time.monotonic()
        subprocess.run([*WARDEN, "ls"], env={**os.environ}, capture_output=True, check=True)
        ls_time = time.monotonic() - t1
        print(
            f"host memory per guest {per_guest:.1f} MB (raw linux.uml by hand: {RAW_GUEST_MB} MB)"
        )
        print(
            f"daemon PSS {daemon_pss:.1f} MB ({idle_daemon:.1f} MB with no guest): "
            f"{daemon_added / N * 1000:.0f} kB more per guest; "
            f"{fds_per_guest:.1f} fds per guest; `warden ls` {ls_time * 1000:.0f} ms"
        )
    finally:
        d.close()
        drop_home(home, "SCALE_KEEP")
    supervision = max(daemon_added, 0.0) / N
    result(
        f"{N} idle guests: host memory per guest",
        per_guest,
        RAW_GUEST_MB,
        "report",
        "MB",
        "raw linux.uml (uml-facts.md)",
    )
    result(
        f"{N} guests: daemon memory per guest",
        supervision,
        RAW_GUEST_MB,
        "<= 0.1x of a guest",
        "MB",
        "one raw guest",
        ok=supervision <= RAW_GUEST_MB / 10,
    )
    result(f"{N} consoles answer a command", answer, None, "report", "s")


if __name__ == "__main__":
    main()
