"""Claim: the honeypot kernel's tty log costs the guest little: tty throughput with logging on
is at least 95% of the same kernel's with logging off.

Workload (the path an intruder's ssh session takes): inside the guest a small static program
opens a pty pair, a child writes 8 MiB to the slave in 4 KiB writes and the parent reads it
all from the master (raw mode); it reports the guest's own elapsed time. Every byte is then
logged twice (WRITE on the slave, READ on the master). A second number, for information:
8 MiB written to the console (the host reads the socket).

Ours: the honeypot kernel booted with `tty_log_fd=` (a 1 MiB pipe drained by a host thread).
Anchor: the same kernel and image without it. Boots alternate (off, on, off, on), each runs
the workload RUNS times; medians of MB/s are compared. The log must lose nothing (a log
that dropped records would make logging look free): the kernel's own counters are checked.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, result  # first: it puts the repository on sys.path

# isort: split
from tests.support.honeypot import LogCapture, honeypot_kernel
from tests.support.rawboot import RawGuest
from warden.honeypot import ttylog
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress
from warden.uml import mconsole

RUNS = int(os.environ.get("TTYLOG_RUNS", "5"))
BYTES = 8 << 20

PTYBENCH_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    long total = atol(argv[1]), got = 0;
    static char buf[65536], chunk[4096];
    struct timespec a, b;
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(m); unlockpt(m);
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    struct termios t;
    tcgetattr(s, &t); cfmakeraw(&t); tcsetattr(s, TCSANOW, &t);
    memset(chunk, 'x', sizeof chunk);
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) {
        for (long left = total; left > 0; ) {
            ssize_t n = write(s, chunk, left < 4096 ? left : 4096);
            if (n <= 0) _exit(1);
            left -= n;
        }
        _exit(0);
    }
    while (got < total) {
        ssize_t n = read(m, buf, sizeof buf);
        if (n <= 0) break;
        got += n;
    }
    waitpid(pid, NULL, 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld %.6f\n", got, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return got == total ? 0 : 1;
}
"""


def helper_disk(work: Path) -> Path:
    """An ext4 image holding the static pty benchmark program."""
    root = work / "root"
    root.mkdir()
    (work / "ptybench.c").write_text(PTYBENCH_C)
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(root / "ptybench"), str(work / "ptybench.c")],
        check=True,
    )
    img = work / "helper.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "16M"], check=True)
    return img


def stats(g: RawGuest, work: Path) -> ttylog.KernelStats:
    with mconsole.Client(g.uml_dir / g.name / "mconsole", work / "mc") as c:
        return ttylog.parse_stats(c.request("ttylog"))


def one_boot(
    lay: object, image: Path, kernel: Path, disk: Path, work: Path, logging: bool
) -> tuple[list[float], list[float], int]:
    """MB/s of RUNS pty runs and RUNS console runs; records the log lost."""
    cap = LogCapture()
    cow = work / "bench.cow"
    cow.unlink(missing_ok=True)
    pty: list[float] = []
    console: list[float] = []
    with RawGuest(
        lay,  # type: ignore[arg-type]
        image,
        cow,
        kernel_path=kernel,
        seed=disk,
        extra=(cap.kernel_arg,) if logging else (),
        pass_fds=(cap.write_fd,) if logging else (),
    ) as g:
        cap.kernel_started()
        g.wait_prompt(60)
        g.run("mount -o ro /dev/ubdb /mnt")
        for _ in range(RUNS):
            n, secs = g.run(f"/mnt/ptybench {BYTES}").split()
            assert int(n) == BYTES
            pty.append(BYTES / float(secs) / 1e6)
        for _ in range(RUNS):
            t0 = time.monotonic()
            g.run(f"head -c {BYTES} /dev/zero | tr '\\0' x", timeout=300)
            console.append(BYTES / (time.monotonic() - t0) / 1e6)
        lost = stats(g, work).lost_records if logging else 0
    cap.close()
    if logging:
        d, _ = cap.records()
        assert d.missing == d.reported_lost
    return pty, console, lost


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wb-ttylog-", dir="/tmp"))
    lay = layout(work / "home")
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    kernel = honeypot_kernel()
    disk = helper_disk(work)
    results: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    lost = 0
    for logging in (False, True, False, True):
        pty, console, lost_now = one_boot(lay, image, kernel, disk, work, logging)
        results[logging][0].extend(pty)
        results[logging][1].extend(console)
        lost += lost_now
        print(
            f"logging {'on ' if logging else 'off'}: pty {median(pty):7.1f} MB/s, "
            f"console {median(console):6.1f} MB/s",
            flush=True,
        )
    on_pty, off_pty = median(results[True][0]), median(results[False][0])
    on_con, off_con = median(results[True][1]), median(results[False][1])
    print(f"pty:     on {on_pty:.1f} MB/s, off {off_pty:.1f} MB/s, ratio {on_pty / off_pty:.3f}")
    print(f"console: on {on_con:.1f} MB/s, off {off_con:.1f} MB/s, ratio {on_con / off_con:.3f}")
    print(f"records the log lost: {lost}")
    result(
        "guest pty throughput with the tty log on vs off (same honeypot kernel)",
        on_pty,
        off_pty,
        ">= 0.95",
        "MB/s",
        anchor_name="honeypot kernel without tty_log_fd",
        ok=on_pty / off_pty >= 0.95 and lost == 0,
    )


if __name__ == "__main__":
    sys.exit(main())
