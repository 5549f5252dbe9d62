"""100 live web consoles open at once on one daemon, against 100 SSH sessions in the same run
(issue 14).

10 guests, 10 consoles each (1 writer, 9 spies), all open together: web consoles are
websockets to the web console (wss, a session cookie from `warden web link`, the protocol the
browser's page speaks: tests/web/test_web_guest.py drives the same endpoint from Chromium);
SSH sessions are OpenSSH `ssh` processes through the concentrator (benchmarks/console.py,
claim 3). For each: how long all 100 take to attach, how many hold (every console sees its
guest's answer to a command its writer typed), the daemon's memory added with them open, its
CPU for the typing round, and `warden ls` while they are open.

Goals: 100 of 100 web consoles hold; attaching them takes no longer than SSH's (ratio <= 1).
"""

import asyncio
import json
import os
import re
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from _common import result
from console import daemon_cpu, drop, scratch, shell, wait_running

# isort: split
from tests.console.test_concentrator import free_port
from tests.support.daemon import DaemonProc
from tests.support.ssh_client import SshSession, SshUser
from warden.tasks import spawn

GUESTS, PER_GUEST = 10, 10
TOTAL = GUESTS * PER_GUEST


def fleet(ssh_port: int, web_port: int, alice: SshUser) -> str:
    text = f"""
[concentrator]
listen = "127.0.0.1:{ssh_port}"
[web]
listen = "127.0.0.1:{web_port}"
[[owner]]
name = "alice"
keys = ["{alice.public}"]
"""
    for i in range(GUESTS):
        text += f'[[machine]]\nname = "g{i}"\nowner = "alice"\nmemory = "64M"\nautostart = false\n'
    return text


def rss_kib(d: DaemonProc) -> int:
    assert d.proc is not None
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(m[1]) if m else 0


class WebConsole:
    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse):
        self.name = name
        self.ws = ws
        self.out = bytearray()
        self.attached = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.out += msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT and "attached" in json.loads(msg.data):
                self.attached.set()


async def web_round(d: DaemonProc, web_port: int, names: list[str]) -> dict[str, Any]:
    base = f"https://127.0.0.1:{web_port}"
    link = d.cli("web", "link", "alice").stdout.strip()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = aiohttp.TCPConnector(ssl=ctx, limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        r = await http.post(
            base + "/api/login",
            json={"token": link.split("#token=", 1)[1]},
            headers={"Origin": base},
        )
        assert r.status == 200, await r.text()
        cookie = r.headers["Set-Cookie"].split(";", 1)[0]
        headers = {"Origin": base, "Cookie": cookie}
        rss0, t0 = rss_kib(d), time.monotonic()
        consoles: list[WebConsole] = []

        async def open_one(name: str, k: int) -> WebConsole:
            mode = "rw" if k == 0 else "spy"
            ws = await http.ws_connect(
                f"wss://127.0.0.1:{web_port}/api/guests/{name}/console/con0?mode={mode}",
                headers=headers,
            )
            c = WebConsole(name, ws)
            c.task = spawn(c.pump(), f"console {name}")
            await asyncio.wait_for(c.attached.wait(), 120)
            return c

        # the writers first (a spy never conflicts; a second writer would)
        consoles += await asyncio.gather(*(open_one(n, 0) for n in names))
        consoles += await asyncio.gather(
            *(open_one(n, k) for n in names for k in range(1, PER_GUEST))
        )
        attach_s = time.monotonic() - t0
        await asyncio.sleep(1)
        rss1 = rss_kib(d)
        ls_t = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, d.ls)
        ls_s = time.monotonic() - ls_t
        cpu0 = daemon_cpu(d)
        for c in consoles[:GUESTS]:
            await c.ws.send_bytes(f"echo mark-{c.name}-$((40+2))\n".encode())
        deadline = time.monotonic() + 120
        held: set[int] = set()
        while time.monotonic() < deadline and len(held) < len(consoles):
            for i, c in enumerate(consoles):
                if f"mark-{c.name}-42".encode() in c.out:
                    held.add(i)
            await asyncio.sleep(0.05)
        cpu = daemon_cpu(d) - cpu0
        for c in consoles:
            await c.ws.close()
            if c.task is not None:
                c.task.cancel()
    return {
        "attach_s": attach_s,
        "held": len(held),
        "rss_kib": rss1 - rss0,
        "cpu_s": cpu,
        "ls_s": ls_s,
    }


def ssh_round(d: DaemonProc, port: int, alice: SshUser, names: list[str]) -> dict[str, Any]:
    sessions: list[tuple[str, SshSession]] = []
    rss0, t0 = rss_kib(d), time.monotonic()
    try:
        for k in range(PER_GUEST):  # the writers first, as for the web
            for n in names:
                args = (n,) if k == 0 else (n, "--spy")
                sessions.append((n, alice.session(port, *args)))
        for _, s in sessions:
            s.expect("attached to", stream="err", timeout=120)
        attach_s = time.monotonic() - t0
        time.sleep(1)
        rss1 = rss_kib(d)
        ls_t = time.monotonic()
        d.ls()
        ls_s = time.monotonic() - ls_t
        cpu0 = daemon_cpu(d)
        for n, s in sessions[:GUESTS]:
            s.send(f"echo mark-{n}-$((40+2))\n")
        held = 0
        for n, s in sessions:
            try:
                s.expect(rf"mark-{n}-42", timeout=120)
                held += 1
            except AssertionError as e:
                print(f"  {n}: an SSH session did not hold: {str(e)[:200]}")
        cpu = daemon_cpu(d) - cpu0
    finally:
        for _, s in sessions:
            s.close()
    return {"attach_s": attach_s, "held": held, "rss_kib": rss1 - rss0, "cpu_s": cpu, "ls_s": ls_s}


def show(what: str, r: dict[str, Any]) -> None:
    print(
        f"  {what}: {r['held']} of {TOTAL} held; attached in {r['attach_s']:.2f} s; daemon +"
        f"{r['rss_kib'] / 1024:.1f} MiB RSS with them open; {r['cpu_s']:.2f} CPU-s for the "
        f"typing round; warden ls {r['ls_s'] * 1000:.0f} ms",
        flush=True,
    )


def main() -> int:
    d, alice = scratch()
    ssh_port, web_port = free_port(), free_port()
    names = [f"g{i}" for i in range(GUESTS)]
    try:
        d.apply(fleet(ssh_port, web_port, alice))
        for n in names:
            d.cli("start", n, "--no-wait")
        wait_running(d, names, timeout=600)
        for n in names:
            shell(d, n, "echo bo''ot-ok", r"boot-ok")
        print(f"{TOTAL} consoles over {GUESTS} guests (1 writer + {PER_GUEST - 1} spies each)")
        web = asyncio.run(web_round(d, web_port, names))
        show("web", web)
        ssh = ssh_round(d, ssh_port, alice, names)
        show("ssh", ssh)
        print(f"  load {os.getloadavg()[0]:.1f}", flush=True)
        result(
            f"web consoles that hold, of {TOTAL} open at once over {GUESTS} guests",
            float(web["held"]),
            float(ssh["held"]),
            f"{TOTAL} of {TOTAL}",
            "consoles",
            anchor_name="SSH sessions",
            ok=web["held"] == TOTAL,
        )
        result(
            f"time to attach {TOTAL} web consoles",
            web["attach_s"],
            ssh["attach_s"],
            "<= 1x",
            "s",
            anchor_name=f"{TOTAL} SSH sessions",
            ok=web["attach_s"] <= ssh["attach_s"],
        )
    finally:
        drop(d, alice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
