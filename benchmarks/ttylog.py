"""Claim: the honeypot kernel's tty log costs the guest little: tty throughput with logging on
is at least 95% of the same kernel's with logging off.

Workload (the path an intruder's ssh session takes): inside the guest a small static program
opens a pty pair, a child writes 8 MiB to the slave in 4 KiB writes and the parent reads it
all from the master (raw mode); it reports the guest's own elapsed time. Every byte is then
logged twice (WRITE on the slave, READ on the master). A second number, for information:
8 MiB written to the console (the host reads the socket).

Ours: the honeypot kernel booted with `tty_log_fd=` on a regular file. A file never refuses
a write, so every record is written and the whole cost is counted; behind a pipe that a
busy host drains too slowly, the kernel would drop records instead of waiting, which makes
logging look cheaper than it is. The log is decoded afterwards and must have lost nothing.
Anchor: the same kernel and image without `tty_log_fd=`. Both guests run side by side and
take turns, RUNS times each, in ROUNDS rounds of fresh boots. Two identical guests measured
this way differed by up to 25% (an A/A test): the slot a guest boots into and the order of
turns matter on this machine, so which slot logs alternates between rounds and which guest
goes first alternates between turns. The machine is shared (load average 5-7 on 2 cores while this
was written), so wall-clock throughput varies by a factor of 3 between runs of the same
guest; the claim therefore uses throughput per CPU-second the guest used (all its host
processes, from its cgroup's cpu.stat, which includes the kernel's writes of the log):
what the guest would reach on a dedicated core. Other work on the machine can only slow a
run down, so the claim compares the best run of each (as `timeit` advises: the slower runs
measure the interference, not the code); medians and wall-clock numbers are printed beside.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, result  # first: it puts the repository on sys.path

# isort: split
from tests.support.honeypot import honeypot_kernel
from tests.support.rawboot import RawGuest
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import NullProgress
from warden.sessionlog import ttylog
from warden.uml import mconsole

RUNS = int(os.environ.get("TTYLOG_RUNS", "8"))
ROUNDS = int(os.environ.get("TTYLOG_ROUNDS", "4"))
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


def cpu_seconds(g: RawGuest) -> float:
    for line in (g.cg.path / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"no usage_usec in {g.cg.path / 'cpu.stat'}")


def pty_run(g: RawGuest) -> tuple[float, float]:
    """(MB/s, MB per CPU-second) of one pty copy."""
    c0 = cpu_seconds(g)
    n, secs = g.run(f"/mnt/ptybench {BYTES}").split()
    used = cpu_seconds(g) - c0
    assert int(n) == BYTES
    return BYTES / float(secs) / 1e6, BYTES / used / 1e6


def console_run(g: RawGuest) -> tuple[float, float]:
    c0, t0 = cpu_seconds(g), time.monotonic()
    g.run(f"head -c {BYTES} /dev/zero | tr '\\0' x", timeout=300)
    used, took = cpu_seconds(g) - c0, time.monotonic() - t0
    return BYTES / took / 1e6, BYTES / used / 1e6


Runs = dict[bool, list[tuple[float, float]]]


def one_round(
    lay: object, image: Path, kernel: Path, disk: Path, work: Path, r: int
) -> tuple[Runs, Runs, int]:
    """Two guests side by side, one logging; RUNS turns each of both workloads."""
    log = work / f"tty-{r}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.set_inheritable(fd, True)
    guests = {}
    # which slot (booted first, its processes made first) logs alternates between rounds
    boot_order = (r % 2 == 0, r % 2 == 1)
    for slot, logging in enumerate(boot_order):
        (work / f"slot{slot}.cow").unlink(missing_ok=True)
        guests[logging] = RawGuest(
            lay,  # type: ignore[arg-type]
            image,
            work / f"slot{slot}.cow",
            kernel_path=kernel,
            seed=disk,
            name=f"ttylog-{slot}",
            extra=(f"tty_log_fd={fd}",) if logging else (),
            pass_fds=(fd,) if logging else (),
        )
    pty: Runs = {True: [], False: []}
    console: Runs = {True: [], False: []}
    try:
        for logging in boot_order:
            guests[logging].start()
        os.close(fd)
        for g in guests.values():
            g.wait_prompt(60)
            g.run("mount -o ro /dev/ubdb /mnt")
        for workload, runs, fn in (("pty", pty, pty_run), ("console", console, console_run)):
            for i in range(RUNS):
                order = (False, True) if i % 2 == 0 else (True, False)  # who goes first alternates
                for logging in order:
                    runs[logging].append(fn(guests[logging]))
                (off_wall, off_cpu), (on_wall, on_cpu) = runs[False][-1], runs[True][-1]
                print(
                    f"round {r + 1} {workload} {i + 1}: off {off_wall:6.1f} MB/s "
                    f"{off_cpu:6.1f} MB/cpu-s, on {on_wall:6.1f} MB/s {on_cpu:6.1f} MB/cpu-s",
                    flush=True,
                )
        lost = stats(guests[True], work).lost_records
    finally:
        for g in guests.values():
            g.close()
    d = ttylog.TtyLogDecoder()
    with log.open("rb") as f:
        while block := f.read(1 << 20):
            d.feed(block)
    d.close()
    print(f"round {r + 1} log: {log.stat().st_size / 1e6:.0f} MB in {d.records} records")
    log.unlink()
    return pty, console, lost + d.missing


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wb-ttylog-", dir="/tmp"))
    lay = layout(work / "home")
    lay.ensure()
    image = minimal.build(ImageStore(lay), NullProgress())
    kernel = honeypot_kernel()
    disk = helper_disk(work)
    pty: Runs = {True: [], False: []}
    console: Runs = {True: [], False: []}
    lost = 0
    try:
        for r in range(ROUNDS):
            p, c, lost_now = one_round(lay, image, kernel, disk, work, r)
            for logging in (True, False):
                pty[logging] += p[logging]
                console[logging] += c[logging]
            lost += lost_now
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"records the log lost: {lost}")
    for name, runs in (("pty", pty), ("console", console)):
        for k, unit in ((0, "MB/s (wall clock)"), (1, "MB per CPU-second")):
            for stat, f in (("median", median), ("best", max)):
                on_m = f([r[k] for r in runs[True]])
                off_m = f([r[k] for r in runs[False]])
                print(
                    f"{name:8} {unit:18} {stat:6}: on {on_m:6.1f}, off {off_m:6.1f}, "
                    f"ratio {on_m / off_m:.3f}"
                )
    on_pty = max(r[1] for r in pty[True])
    off_pty = max(r[1] for r in pty[False])
    result(
        "guest pty throughput per CPU-second with the tty log on vs off (same honeypot kernel)",
        on_pty,
        off_pty,
        ">= 0.95",
        "MB per CPU-second",
        anchor_name="honeypot kernel without tty_log_fd",
        ok=on_pty / off_pty >= 0.95 and lost == 0,
    )


if __name__ == "__main__":
    sys.exit(main())
