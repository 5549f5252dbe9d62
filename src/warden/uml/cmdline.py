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
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path


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
    args += shlex.split(plan.kernel_args)
    return args


def guest_tty(line: str) -> str:
    """The guest's device for a line: con0 -> tty0, ssl3 -> ttyS3."""
    if line.startswith("con"):
        return "tty" + line[3:]
    if line.startswith("ssl"):
        return "ttyS" + line[3:]
    raise ValueError(f"line {line!r}: expected con0 or sslN")
