"""Claim (a measured limit, not a goal met): a system call in a guest costs far more than on the
host, and no disguise hides it; `warden honeypot score` reports it as a tell that cannot be
hidden when a guest's read/write pair costs more than 5 times the host's.

Workload: the score's own probe, `dd if=/dev/zero of=/dev/null bs=1 count=N` (two system
calls a byte; dd times itself), in a minimal guest on the honeypot kernel with the `baremetal`
disguise and a persona; anchor: the same dd on the host. Best of RUNS each (other work on this
shared machine can only slow a run down). Printed: nanoseconds a system call, and the ratio.
"""

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path

from _common import result  # first: it puts the repository on sys.path

# isort: split
from tests.support.honeypot import honeypot_kernel
from tests.support.rawboot import RawGuest
from warden import persona
from warden.honeypot import boot
from warden.honeypot.score.judge import ns_per_syscall
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress

RUNS = int(os.environ.get("LATENCY_RUNS", "5"))
DD = "dd if=/dev/zero of=/dev/null bs=1 count=20000"
# the score's own probe (busybox's dd prints no timing: /proc/uptime around it)
PROBE = f"a=$(cut -d' ' -f1 /proc/uptime); {DD} 2>&1; echo uptime $a $(cut -d' ' -f1 /proc/uptime)"


def host() -> float:
    best = float("inf")
    for _ in range(RUNS):
        r = subprocess.run(DD.split(), capture_output=True, text=True, check=True)
        ns = ns_per_syscall(r.stderr)
        assert ns is not None, r.stderr
        best = min(best, ns)
    return best


async def guest(home: Path) -> float:
    lay = layout(home)
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    kernel = honeypot_kernel()
    p = persona.derive(os.urandom(32), persona.host_cpu_vendor())
    hp = boot.prepare(disguise="baremetal", persona=p)
    best = float("inf")
    async with hp:
        with RawGuest(lay, image, home / "g.cow", kernel_path=kernel, extra=hp.kernel_args,
                      pass_fds=hp.pass_fds) as g:  # fmt: skip
            hp.kernel_started()
            await asyncio.to_thread(g.wait_prompt)
            for _ in range(RUNS):
                out = await asyncio.to_thread(g.run, PROBE)
                ns = ns_per_syscall(out)
                assert ns is not None, out
                print(f"guest: {ns:.0f} ns", flush=True)
                best = min(best, ns)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="warden-bench-latency-") as tmp:
        g = asyncio.run(guest(Path(tmp)))
    h = host()
    print(f"guest {g:.0f} ns, host {h:.0f} ns a system call: {g / h:.1f}x", flush=True)
    result("a guest's system call against the host's (a tell no disguise hides)", g, h,
           "> 5x: reported as an unhideable tell", "ns", "the same dd on the host",
           ok=g / h > 5)  # fmt: skip


if __name__ == "__main__":
    main()
