"""The kernel process's stdout and stderr: a FIFO the daemon reads, not a file it writes.

A file the kernel appends to directly has no bound a guest cannot get past (RLIMIT_FSIZE is
per process: it would also cap the COW disk, and kill the kernel with SIGXFSZ). So the kernel
writes into `lines/kernel.out`, as it writes its terminal lines, and the daemon copies what
it reads into `logs/kernel-BOOT.log` under a budget (warden.console.kernellog; docs/formats/
session-log.md, "The kernel log"). As for the lines, the kernel also holds a spare read end
it never uses, so that a daemon going away never gives it EPIPE (or SIGPIPE); its write end
is non-blocking, so that a FIFO nobody drains makes it drop messages, never wait.
"""

import contextlib
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from warden.daemon.files import F_SETPIPE_SZ, PIPE_SIZE, MachineFiles

FIFO = "kernel.out"


def fifo(files: MachineFiles) -> Path:
    return files.lines / FIFO


@dataclass
class KernelOutFds:
    """The two ends the kernel inherits: `write` becomes its fd 1 and 2; `keep` it holds."""

    write: int
    keep: int

    def close(self) -> None:
        for fd in (self.write, self.keep):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_kernel_ends(files: MachineFiles) -> KernelOutFds:
    path = fifo(files)
    if path.exists() and not stat.S_ISFIFO(path.lstat().st_mode):
        path.unlink()
    if not path.exists():
        os.mkfifo(path, 0o600)
    # The read end first: a non-blocking open for writing fails while no reader exists.
    keep = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        write = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        os.close(keep)
        raise
    with contextlib.suppress(OSError):
        fcntl.fcntl(write, F_SETPIPE_SZ, PIPE_SIZE)
    return KernelOutFds(write, keep)
