"""The two host channels of a honeypot guest and how they outlive the daemon.

Each channel is an AF_UNIX SOCK_SEQPACKET socketpair: the kernel gets one end (`tty_log_fd=`,
`disguise_fd=`), the daemon keeps the other, the *host end*. A daemon that dies would close the
host end with it: the kernel would then see EPIPE and stop its tty log for the rest of the
boot, and its disguise channel would be dead (filters serve their fallback). So the kernel also
inherits a *spare* copy of the host end, which it never uses: it only keeps the socket alive,
as the console FIFOs' unused ends do
(docs/decisions/2026-11-29-consoles-no-supervisor-process.md). While no daemon runs, what the
kernel sends waits in the socket (the tty log's kernel end gets a large send buffer for that).
A new daemon takes its own copy of the host end back from the kernel process with
pidfd_getfd(2), by the fd number this module wrote into the machine's state file at boot, and
checks that it got the same socket (its inode). Nothing here changes the daemon's namespaces or
credentials; the kernel process is the daemon's child's child and runs unprivileged, and root
may take its fds.

State file: machines/NAME/honeypot.json, written whole and atomically (warden.statefile),
removed when the boot ends. It names the boot, the kernel's pid and start time, and per
channel the kernel's fd, the spare's fd and the socket's inode; for the disguise channel also
the profile and the rule-set generation last sent.
"""

import contextlib
import ctypes
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from warden import statefile
from warden.errors import WardenError

STATE_FILE = "honeypot.json"
STATE_VERSION = 1
TTYLOG_SNDBUF = 4 << 20  # the kernel's send buffer (Linux doubles it): room while no daemon runs
DISGUISE_SNDBUF = 1 << 20  # the daemon's: rule sets (<= 128 KiB) wait there for the guest
SYS_PIDFD_GETFD = 438  # x86-64 (arch/x86/entry/syscalls/syscall_64.tbl), Linux 5.6+


class ChannelError(WardenError):
    """A honeypot channel could not be made or taken back."""


@dataclass
class Channel:
    """One socketpair. `kernel_fd` and `spare_fd` are for the kernel (pass them, by number,
    and close them in the daemon once it runs); `host` is the daemon's end."""

    host: socket.socket
    kernel_fd: int
    spare_fd: int

    @property
    def inode(self) -> int:
        return os.fstat(self.host.fileno()).st_ino

    def kernel_fds(self) -> list[int]:
        return [self.kernel_fd, self.spare_fd]

    def close_host(self) -> None:
        self.host.close()


def make_channel(kernel_sndbuf: int = 0, host_sndbuf: int = 0) -> Channel:
    host, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if kernel_sndbuf:
            kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, kernel_sndbuf)
        if host_sndbuf:
            host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, host_sndbuf)
        host.setblocking(False)
        spare = os.dup(host.fileno())  # not inheritable: only the launcher passes it on
    except OSError:
        host.close()
        kernel.close()
        raise
    return Channel(host, kernel.detach(), spare)


def ttylog_channel() -> Channel:
    return make_channel(kernel_sndbuf=TTYLOG_SNDBUF)


def disguise_channel() -> Channel:
    return make_channel(host_sndbuf=DISGUISE_SNDBUF)


_libc = ctypes.CDLL(None, use_errno=True)


def take_fd(pid: int, fd: int, inode: int) -> socket.socket:
    """A copy of fd `fd` of process `pid`, which must be the socket with `inode`."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise ChannelError(f"pid {pid}: {e.strerror}") from None
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise ChannelError(f"pidfd_getfd(pid {pid}, fd {fd}): {os.strerror(err)}")
    finally:
        os.close(pidfd)
    st = os.fstat(got)
    if st.st_ino != inode:
        os.close(got)
        raise ChannelError(
            f"fd {fd} of pid {pid} is inode {st.st_ino}, not the channel's socket {inode}"
        )
    os.set_inheritable(got, False)
    sock = socket.socket(fileno=got)
    if sock.type != socket.SOCK_SEQPACKET:
        sock.close()
        raise ChannelError(f"fd {fd} of pid {pid} is not a SEQPACKET socket")
    sock.setblocking(False)
    return sock


# ---- the state file ----------------------------------------------------------------------


@dataclass
class ChannelState:
    kernel_fd: int
    spare_fd: int
    inode: int


@dataclass
class PotState:
    boot: int
    pid: int
    pid_start: int | None
    ttylog: ChannelState | None = None
    disguise: ChannelState | None = None
    profile: str = ""  # the disguise reference as the fleet gave it
    generation: int = 0  # the last rule set sent

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "PotState":
        raw: dict[str, Any] = json.loads(text)
        if raw.pop("version", None) != STATE_VERSION:
            raise ValueError("unknown version")
        for key in ("ttylog", "disguise"):
            if raw.get(key) is not None:
                raw[key] = ChannelState(**raw[key])
        return cls(**raw)


def write_state(machine_dir: Path, state: PotState) -> None:
    path = machine_dir / STATE_FILE
    statefile.write(path, state.to_json().encode(), mode=0o644)


def read_state(machine_dir: Path) -> PotState | None:
    """The state a previous daemon left; None if there is none (ValueError if unreadable)."""
    try:
        text = (machine_dir / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        return PotState.from_json(text)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{machine_dir / STATE_FILE}: {e}") from None


def remove_state(machine_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (machine_dir / STATE_FILE).unlink()
