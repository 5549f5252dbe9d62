"""One boot of a guest, worked out without touching the host (pure).

`launch_plan(spec, files, extras, kernel)` is what the launcher is handed (warden.host.launch):
the kernel's command line (warden.uml.cmdline) with every path as the kernel sees it (a jail
maps them: BootExtras.paths), its environment, the fds it inherits, its cgroup, rlimits and
jail. `seed_for` is what the seed disk tells the guest (warden.images.seed). The supervisor
gathers the inputs (files made, fds opened, features asked) and hands the plan over.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from warden.daemon.files import KernelLineFds, MachineFiles
from warden.daemon.kernelout import KernelOutFds
from warden.daemon.seam import BootExtras
from warden.host.launch import LaunchPlan
from warden.images import seed as seedmod
from warden.spec.fleet import Machine as Spec
from warden.uml import cmdline

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class KernelInputs:
    """What this boot runs and where its kernel's ends are (the fds are open in the daemon)."""

    kernel: Path  # the UML binary
    shim: Path  # the xstate shim (LD_PRELOAD)
    base: Path  # the base image under the COW disk
    lines: Sequence[KernelLineFds]  # each terminal line's four fds
    out: KernelOutFds  # the kernel's stdout/stderr FIFO
    cgroup_procs: Sequence[Path]  # the guest's cgroup.procs files


def launch_plan(spec: Spec, files: MachineFiles, extras: BootExtras, k: KernelInputs) -> LaunchPlan:
    v = extras.view
    boot = cmdline.BootPlan(
        memory=spec.memory,
        cow=v(files.cow),
        base=v(k.base),
        umid=spec.name,
        uml_dir=v(files.ctl),
        lines=tuple(cmdline.LineFds(f.line, f.read, f.write) for f in k.lines),
        seed=v(files.seed),
        notify=v(files.notify),
        kernel_args=spec.kernel_args,
        extra=tuple(extras.kernel_args),
    )
    return LaunchPlan(
        argv=cmdline.argv(v(k.kernel), boot),
        env={"PATH": PATH, "LD_PRELOAD": str(k.shim), **extras.env},
        keep_fds=kept_fds(extras, k),
        log_fd=k.out.write,
        cgroup_procs=[str(p) for p in k.cgroup_procs],
        cwd=str(files.ctl),  # the kernel binds notify/reply by relative names; a jail maps it
        rlimits=extras.rlimits,
        jail=extras.jail,
    )


def kept_fds(extras: BootExtras, k: KernelInputs) -> list[int]:
    """The fds the kernel keeps, under the same numbers: each line's four, the features'
    (taps, honeypot channels), the spare read end of its output FIFO."""
    return [fd for f in k.lines for fd in f.all()] + extras.fds + [k.out.keep]


def passed_fds(extras: BootExtras, k: KernelInputs) -> list[int]:
    """The fds handed to the launcher: those kept, and the output FIFO it makes fd 1 and 2."""
    return kept_fds(extras, k) + [k.out.write]


def seed_for(
    spec: Spec, network: dict[str, str], fpu_safe: bool, hostname: str = ""
) -> seedmod.Seed:
    """`hostname`: a persona's, when the guest is not to be named after its machine."""
    return seedmod.Seed(
        hostname=hostname or spec.name,
        lines=tuple(cmdline.guest_tty(line) for line in spec.lines),
        root_hash=spec.root_password_hash,
        network=network,
        admin_hash=spec.admin_password_hash,
        ssh_keys=spec.ssh_keys,
        fpu_safe=fpu_safe,
    )
