"""The UML kernel command line for one boot, from a plan (pure: no I/O).

Parameters and where UML reads them (Debian's linux-source-6.1):
    mem=            arch/um/kernel/um_arch.c          boot memory size (the hotplug maximum)
    ubdN=COW,BASE   arch/um/drivers/ubd_kern.c        copy-on-write disk over a shared base
    ubdNr=FILE      ubd_kern.c                        read-only disk (the seed)
    umid=, uml_dir= arch/um/os-Linux/umid.c           where the pid file and mconsole live
    mconsole=notify:PATH  arch/um/drivers/mconsole_kern.c
    conN=fd:IN,fd:OUT / sslN=...  arch/um/drivers/chan_kern.c (fd channels)
    con=none ssl=none  every other line unconfigured ('null' makes UML loop on epoll errors)
    vecN:transport=fd,fd=N,vec=0  arch/um/drivers/vector_kern.c (a tap fd; vec=0 because a
                    tap fd does not support recvmmsg/sendmmsg)
    pty.legacy_count=0  drivers/tty/pty.c (no BSD ptys: see argv())

A fleet's `kernel_args` come last, and never with a key warden sets or one that reaches the
host (RESERVED, checked by the fleet file's validation and dropped here again): UML's own
parameters differ in how they treat a repeated key (umid= and ubdN= keep the first, mem= and
mconsole= the last), so "put warden's last" alone would not make warden's win; leaving the
reserved keys out does, whatever the order. docs/decisions/2026-12-07-hostile-disks-and-jail.md.
"""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# The kernel joins its argv with spaces into one command line of at most 4096 bytes and exits
# ("Too many command line arguments!") beyond it; warden's own arguments need a few hundred.
MAX_KERNEL_ARGS = 1024
# A token that cannot hide a second parameter once the kernel has joined and re-split the
# command line: no blank, no quote (the generic parser honours "..."), printable ASCII only.
_TOKEN = re.compile(r"[!#-~]+")

_HOST = "reaches the host"
_NIC = "give NICs with nics (warden passes their fds)"
_SOUND = f"{_HOST}: it opens a host sound device"
# Parameters a machine's kernel_args may not give, and why. A key matches every parameter that
# starts with it, as the kernel matches them (UML's __uml_setup and the generic __setup compare
# prefixes: __setup("con") also takes console=); a key in EXACT matches the whole parameter
# name (the part before '='). '-' and '_' are the same character to the kernel (parameq()).
RESERVED: dict[str, str] = {
    "mem=": "warden sets it from the machine's memory (the balancer and cgroup limit use it)",
    "ubd": "warden sets the disks (ubd0: the COW disk over the base warden recorded, ubd1: "
    "the seed); another ubd names a host file",
    "udb": "a misspelt ubd; warden sets the disks",
    "fake_ide": "warden sets the disks",
    "root=": "warden boots from ubd0 (root=/dev/ubda)",
    "rw": "warden mounts the root read-write",
    "ro": "warden mounts the root read-write",
    "umid=": "warden names the guest's mconsole after the machine",
    "uml_dir=": "warden puts the mconsole in the machine's ctl directory",
    "mconsole=": "warden listens for the guest's notifications",
    "con": f"warden wires the consoles to its relays; other channels {_HOST} (files, ports, "
    "ptys, terminals, xterms)",
    "ssl": f"warden wires the serial lines to its relays; other channels {_HOST}",
    "xterm=": f"{_HOST}: it names a host program to run",
    "stderr=": "warden keeps the kernel's messages in its kernel log",
    "eth": f"{_HOST} (tuntap, daemon, mcast, slirp and vde helpers); {_NIC}",
    "vec": f"{_HOST}; {_NIC}",
    "hostfs=": f"{_HOST}: it sets the host directory hostfs shows",
    "iomem=": f"{_HOST}: it maps a host file into the guest",
    "initrd=": f"{_HOST}: it reads a host file",
    "dtb=": f"{_HOST}: it reads a host file",
    "dsp=": _SOUND,
    "mixer=": _SOUND,
    "hostaudio.": _SOUND,
    "virtio_uml.": f"{_HOST}: it connects to a host socket",
    "time_travel": f"{_HOST} (ext mode connects to a host socket) and changes the guest's clock",
    "nosysemu": "the jail's seccomp filter relies on PTRACE_SYSEMU",
    "tty_log_fd=": "warden passes the honeypot's tty log channel itself (tty_log)",
    "disguise_fd=": "warden passes the honeypot's disguise channel itself (disguise)",
    "pty.legacy_count=": "warden sets it (no BSD ptys)",
    "-": "UML's options (--help, --version, --showconfig) print and exit, and after '--' "
    "the kernel hands its arguments to init",
}
EXACT = frozenset({"rw", "ro", "nosysemu"})
# Allowed unless the boot relies on warden's init (a jail or a tty log: see the fleet file).
INIT_KEY = "init"


def _fold(s: str) -> str:
    return s.replace("-", "_")


def param_name(token: str) -> str:
    """The parameter a token sets: the part before '=' (the whole token for a flag)."""
    return token.split("=", 1)[0]


def reserved(token: str) -> str | None:
    """Why `token` may not be among a machine's kernel_args, or None if it may."""
    folded, name = _fold(token), _fold(param_name(token))
    for key, why in RESERVED.items():
        k = _fold(key)
        if name == k if key in EXACT else (folded.startswith(k) or name == k.rstrip("=")):
            return why
    return None


def split_kernel_args(text: str) -> list[str]:
    """The tokens of a kernel_args string (shell-like quoting), or ValueError saying why not."""
    if len(text) > MAX_KERNEL_ARGS:
        raise ValueError(f"{len(text)} characters; at most {MAX_KERNEL_ARGS}")
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"cannot be split into words ({e})") from None
    for t in tokens:
        if not _TOKEN.fullmatch(t) or '"' in t:
            raise ValueError(
                f"argument {t!r}: only printable ASCII without blanks or double quotes (the "
                "kernel joins its arguments with blanks and splits them again)"
            )
    return tokens


def user_args(text: str) -> list[str]:
    """A machine's kernel_args as they go on the command line: reserved keys left out (the
    fleet file refuses them; this keeps warden's own whatever reached the daemon)."""
    try:
        tokens = split_kernel_args(text)
    except ValueError:
        return []
    return [t for t in tokens if reserved(t) is None]


@dataclass(frozen=True)
class LineFds:
    """One terminal line: 'con0' or 'sslN', and the fds UML reads and writes it through."""

    name: str
    read_fd: int
    write_fd: int


@dataclass(frozen=True)
class BootPlan:
    memory: int  # bytes
    cow: Path
    base: Path
    umid: str
    uml_dir: Path
    lines: tuple[LineFds, ...]
    seed: Path | None = None
    notify: Path | None = None
    nic_fds: tuple[int, ...] = ()
    init: str = "/sbin/init"
    kernel_args: str = ""
    extra: tuple[str, ...] = field(default_factory=tuple)


def mem_arg(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"mem={n >> 20}M"
    return f"mem={max(n >> 10, 1)}K"


def argv(kernel: Path, plan: BootPlan) -> list[str]:
    args = [
        str(kernel),
        mem_arg(plan.memory),
        f"ubd0={plan.cow},{plan.base}",
    ]
    if plan.seed is not None:
        args.append(f"ubd1r={plan.seed}")
    args += [
        "root=/dev/ubda",
        "rw",
        f"umid={plan.umid}",
        f"uml_dir={plan.uml_dir}",
    ]
    if plan.notify is not None:
        args.append(f"mconsole=notify:{plan.notify}")
    for line in plan.lines:
        args.append(f"{line.name}=fd:{line.read_fd},fd:{line.write_fd}")
    args += ["con=none", "ssl=none"]
    for i, fd in enumerate(plan.nic_fds):
        args.append(f"vec{i}:transport=fd,fd={fd},vec=0")
    # Debian's config makes 256 legacy BSD pty pairs (512 device nodes): nothing uses them, a
    # udev guest spends seconds on them at boot, and they are a UML tell-tale in /dev.
    args.append("pty.legacy_count=0")
    args.append(f"init={plan.init}")
    args += list(plan.extra)
    args += user_args(plan.kernel_args)
    return args


def guest_tty(line: str) -> str:
    """The guest's device for a line: con0 -> tty0, ssl3 -> ttyS3."""
    if line.startswith("con"):
        return "tty" + line[3:]
    if line.startswith("ssl"):
        return "ttyS" + line[3:]
    raise ValueError(f"line {line!r}: expected con0 or sslN")
