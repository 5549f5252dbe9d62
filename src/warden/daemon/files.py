"""The files of one machine under WARDEN_HOME/machines/NAME (docs/architecture.md, "Files")."""

import contextlib
import fcntl
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

PIPE_SIZE = 1 << 20  # bytes a line buffers while no daemon reads it
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ is only in Python 3.10+ on some builds
F_GETPIPE_SZ = 1032


@dataclass(frozen=True)
class MachineFiles:
    root: Path
    name: str

    @property
    def cow(self) -> Path:
        return self.root / "disk.cow"

    @property
    def seed(self) -> Path:
        return self.root / "seed.img"

    @property
    def ctl(self) -> Path:
        """uml_dir: UML creates ctl/NAME/{pid,mconsole}; warden binds notify and reply here."""
        return self.root / "ctl"

    @property
    def mconsole(self) -> Path:
        return self.ctl / self.name / "mconsole"

    @property
    def notify(self) -> Path:
        return self.ctl / "notify"

    @property
    def reply(self) -> Path:
        return self.ctl / "reply"

    @property
    def reply_intr(self) -> Path:
        """The second client's reply socket (Supervisor.request_intr)."""
        return self.ctl / "reply-intr"

    @property
    def lines(self) -> Path:
        return self.root / "lines"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def fifo(self, line: str, direction: str) -> Path:
        """direction 'in' (to the guest) or 'out' (from the guest)."""
        return self.lines / f"{line}.{direction}"

    def kernel_log(self, boot: int) -> Path:
        return self.logs / f"kernel-{boot}.log"

    def exists(self) -> bool:
        return self.root.exists()

    def create(self, lines: tuple[str, ...]) -> None:
        for d in (self.root, self.ctl, self.lines, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.ctl, 0o755)
        for line in lines:
            for direction in ("in", "out"):
                path = self.fifo(line, direction)
                if path.exists() and not stat.S_ISFIFO(path.lstat().st_mode):
                    path.unlink()
                if not path.exists():
                    os.mkfifo(path, 0o600)

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class KernelLineFds:
    """The four fds of one line that the kernel inherits (why: docs/decisions/
    2026-11-29-consoles-no-supervisor-process.md)."""

    line: str
    read: int  # LINE.in, read end: what the guest reads
    write: int  # LINE.out, write end: what the guest prints
    in_keep: int  # LINE.in, write end, never used: the guest never sees EOF
    out_keep: int  # LINE.out, read end, never used: the guest never gets EPIPE

    def all(self) -> list[int]:
        return [self.read, self.write, self.in_keep, self.out_keep]

    def close(self) -> None:
        for fd in self.all():
            with contextlib.suppress(OSError):
                os.close(fd)


def open_kernel_ends(files: MachineFiles, line: str) -> KernelLineFds:
    fin, fout = files.fifo(line, "in"), files.fifo(line, "out")
    # Open the read ends first: a non-blocking open for writing fails while no reader exists.
    read = os.open(fin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    out_keep = os.open(fout, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    in_keep = os.open(fin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    write = os.open(fout, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    for fd in (read, write):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    return KernelLineFds(line, read, write, in_keep, out_keep)


def pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, F_GETPIPE_SZ)
