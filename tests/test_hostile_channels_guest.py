"""Issue 18, guest-to-host channels, with real guests: guest root floods /proc/mconsole (each
write is a USER_NOTIFY datagram to the daemon) while a second guest is used as usual. The
quiet guest's console and `warden ls` keep answering, and warden.db and the daemon's memory
stay small: the flood is counted in a few events, not stored datagram by datagram."""

import asyncio
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from tests.test_guest_lifecycle import wait_state

pytestmark = pytest.mark.guest

# Writes to /proc/mconsole: 2 x 10^4, by five nested loops. The 100,000-datagram figure of the
# issue is the fault campaign's (benchmarks/faults.py); here the flood only has to outlast a
# few of the daemon's flood windows, on a CI host whatever its load.
FLOOD = 20_000
TEN = "0 1 2 3 4 5 6 7 8 9"
FLOODER = (
    "(for z in 0 1; do "
    + "".join(f"for {v} in {TEN}; do " for v in "abcd")
    + "echo x > /proc/mconsole; "
    + "done; " * 5
    + ") &\n"
)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu(pid: int) -> float:
    """Seconds of CPU the process has used (utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_state(db: Path) -> tuple[int, int]:
    """(rows in events, bytes of the database with its log folded in)."""
    with sqlite3.connect(db, timeout=10) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        n = int(c.execute("SELECT count(*) FROM events").fetchone()[0])
    return n, sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def echo_latencies(d: DaemonProc, name: str, count: int, gap: float) -> list[float]:
    """Type `echo $((7*N))q` on the guest's console `count` times; the seconds each took until
    its output (7N, which the typed text does not contain) came back."""
    connector = aiohttp.UnixConnector(path=str(d.layout.socket))
    out: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://warden/v1/machines/{name}/lines/con0/attach"
        async with session.ws_connect(url, params={"mode": "rw", "force": "1"}) as ws:
            buf = b""
            for i in range(count):
                n = 1000 + i
                want = re.compile(rb"\n%dq\r?\n" % (7 * n))
                t0 = time.monotonic()
                await ws.send_bytes(b"echo $((7*%d))q\n" % n)
                while not want.search(buf):
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        buf += msg.data
                out.append(time.monotonic() - t0)
                buf = b""
                await asyncio.sleep(gap)
    return out


def timed_ls(d: DaemonProc) -> float:
    t0 = time.monotonic()
    d.ls()
    return time.monotonic() - t0


def pct(xs: list[float], p: int) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, len(s) * p // 100)]


def counted(db: Path) -> tuple[int, int, list[dict[str, object]]]:
    """The flood guest's notifications so far: (counted in notify-flood events, stored one by
    one as guest-notify events, the notify-flood events)."""
    with sqlite3.connect(db, timeout=10) as c:
        floods = [
            json.loads(d)
            for (d,) in c.execute(
                "SELECT detail FROM events WHERE machine = 'flood' AND kind = 'notify-flood'"
            )
        ]
        stored = c.execute(
            "SELECT count(*) FROM events WHERE machine = 'flood' AND kind = 'guest-notify'"
        ).fetchone()[0]
    return sum(int(str(f["dropped"])) for f in floods), int(stored), floods


def test_a_guest_flooding_its_notify_socket_stops_nobody_else(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("flood") + machine_toml("quiet"))
    wait_state(daemon, "flood", "running")
    wait_state(daemon, "quiet", "running")
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before_echo = asyncio.run(echo_latencies(daemon, "quiet", 10, 0.1))
    before_ls = [timed_ls(daemon) for _ in range(3)]
    rows0, bytes0 = db_state(daemon.layout.db)
    rss0 = rss(pid)
    cpu0 = cpu(pid)

    daemon.console("flood", FLOODER, timeout=0.5)
    t0 = time.monotonic()
    peak = rss0
    during_echo: list[float] = []
    during_ls: list[float] = []
    # until every write is accounted for: the last burst is reported a flood window after it
    # began (guestinput.FLOOD_WINDOW)
    # (a loaded host writes slower: 416/s was seen at load 12, so the bound is generous)
    while sum(counted(daemon.layout.db)[:2]) < FLOOD and time.monotonic() - t0 < 600:
        during_echo += asyncio.run(echo_latencies(daemon, "quiet", 10, 0.1))
        during_ls.append(timed_ls(daemon))
        peak = max(peak, rss(pid))
    flood_seconds = time.monotonic() - t0
    rows1, bytes1 = db_state(daemon.layout.db)
    rss1 = rss(pid)
    used = cpu(pid) - cpu0  # the flood's, and the quiet guest's consoles and `warden ls`
    dropped, stored, floods = counted(daemon.layout.db)
    print(
        f"\nflood of {flood_seconds:.0f} s: {dropped + stored} notifications "
        f"({(dropped + stored) / flood_seconds:.0f}/s), {stored} stored, {dropped} counted in "
        f"{len(floods)} notify-flood events; rows added {rows1 - rows0}, warden.db "
        f"{bytes0} -> {bytes1} bytes; daemon RSS {rss0 >> 10} -> {rss1 >> 10} KiB "
        f"(peak {peak >> 10} KiB), daemon CPU {used:.1f} s\n"
        f"quiet guest's console echo before: p50 {pct(before_echo, 50) * 1000:.1f} ms, "
        f"p99 {pct(before_echo, 99) * 1000:.1f} ms; during: p50 "
        f"{pct(during_echo, 50) * 1000:.1f} ms, p99 {pct(during_echo, 99) * 1000:.1f} ms, "
        f"max {max(during_echo) * 1000:.1f} ms ({len(during_echo)} echoes)\n"
        f"warden ls before: {max(before_ls):.2f} s, during: max {max(during_ls):.2f} s"
    )
    assert dropped + stored == FLOOD  # every write counted, once
    # what a flooding guest can store: guestinput's gate, 30 events per guest per minute
    assert rows1 - rows0 <= 30 * (int(flood_seconds) // 60 + 1) + 10
    assert all("foreign" not in f["reasons"] for f in floods), floods  # the kernel's own
    assert bytes1 - bytes0 < 256 << 10
    assert peak - rss0 < 32 << 20
    # Nobody else stops: the quiet guest answers as it did before the flood, within a factor
    # that a loaded CI host's noise stays under and a stalled loop (seconds) does not. The
    # figure itself, against its 50 ms goal, is the fault campaign's (benchmarks/faults.py).
    assert pct(during_echo, 99) < max(0.5, 10 * pct(before_echo, 99))
    assert max(during_ls) < max(5.0, 10 * max(before_ls))
