"""Claim: booting through warden costs little over booting linux.uml by hand.

Ours: from `warden start` (the API call) to a shell prompt on the guest's console, seen by a
client attached to the console through the daemon. Anchor: raw `linux.uml` (same kernel, same
image, same memory, a socketpair console) from exec to the same prompt. The runs alternate,
N of each; the medians are compared. Goal: ours / anchor <= 1.2.
"""

import asyncio
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import median, result
from tests.support.daemon import DaemonProc
from tests.support.rawboot import RawGuest
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

N = int(os.environ.get("BOOT_RUNS", "5"))
PROMPT = re.compile(rb"[#$] (\x1b\[6n)?$")
FLEET = """
[[owner]]
name = "bench"
[[machine]]
name = "b1"
owner = "bench"
memory = "64M"
autostart = false
"""


async def warden_boot(d: DaemonProc) -> float:
    """Seconds from the start request to the prompt on con0."""
    conn = aiohttp.UnixConnector(path=str(d.layout.socket))
    async with aiohttp.ClientSession(connector=conn) as s:
        ws = await s.ws_connect("http://w/v1/machines/b1/lines/con0/attach", params={"mode": "rw"})
        t0 = time.monotonic()
        r = await s.post("http://w/v1/machines/b1/start", json={"wait": False})
        assert r.status == 200, await r.text()
        buf = b""
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                buf += msg.data
                if PROMPT.search(buf):
                    took = time.monotonic() - t0
                    break
        await ws.close()
        r = await s.post("http://w/v1/machines/b1/kill", json={"wait": True})
        assert r.status == 200, await r.text()
    return took


def raw_boot(lay: object, image: Path, cow: Path) -> float:
    cow.unlink(missing_ok=True)
    t0 = time.monotonic()
    with RawGuest(lay, image, cow) as g:  # type: ignore[arg-type]
        g.wait_prompt(60)
        return time.monotonic() - t0


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.environ["WARDEN_HOME"] = str(home)
    lay = layout(home)
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    ours: list[float] = []
    raw: list[float] = []
    try:
        d.apply(FLEET)
        d.cli("create", "b1")
        for i in range(N):
            d.cli("reset", "b1")  # a fresh COW each time, as the raw boot gets
            ours.append(asyncio.run(warden_boot(d)))
            raw.append(raw_boot(lay, image, home / "raw.cow"))
            print(
                f"run {i + 1}: warden {ours[-1]:.3f} s, raw linux.uml {raw[-1]:.3f} s", flush=True
            )
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)
    o, a = median(ours), median(raw)
    print(f"median: warden {o:.3f} s, raw {a:.3f} s, ratio {o / a:.2f}")
    result("boot to shell prompt", o, a, "<= 1.2x", "s", "raw linux.uml", ok=o / a <= 1.2)


if __name__ == "__main__":
    main()
