"""One boot's jail, before the launch: what it holds, whose uid, and what the kernel sees.

`prepare` runs off the event loop (it checks files, runs ldd, claims the uid, chowns): it
checks every file the jail will hold, gives the guest its uid (warden.host.uids), hands its COW
file, seed and ctl directory to that uid, puts TMPDIR, rlimits and the kernel's view of its
paths into the boot's extras, and returns the plan the launcher carries out (warden.host.jail).
Inside the jail every file has a neutral name (JAIL_*): nothing the guest could ever see there
is named after a host path. `unjailed` is the same step for a guest with `jail = false`.

Both point the COW header at the base as the kernel will be told it (the header is guest-
written, docs/security.md); a header that named something else is noted in `repaired` (also
when the boot is refused later), for an event.
"""

import os
import secrets
from pathlib import Path

from warden.daemon.seam import BootExtras, Core, Guest
from warden.disk import create as disk_create
from warden.disk import rebase
from warden.disk.backing import kernel_path
from warden.disk.diff import display
from warden.host import cgroup, jail, seccomp, uids
from warden.jail.limits import (
    BRK_GAP_MAX,
    JAIL_TMPFS_SLACK,
    NOFILE,
    JailError,
    check_image_link,
    cpuinfo,
    readable_by,
    shared_objects,
)
from warden.uml import kernel

# Where the kernel sees its files inside the jail: neutral names, the same for every guest, so
# that nothing under the jail's root (which hostfs shows to root in the guest, and which the
# kernel prints in messages the guest can read) tells a host path, a home or an image name.
JAIL_KERNEL_DIR = "/kernel"  # the kernel binary and the xstate shim, under their file names
JAIL_COW = "/disk/cow"
JAIL_BASE = "/disk/base"
JAIL_SEED = "/disk/seed"
# Under a directory that cannot be listed (0711), with names drawn for each boot: the memory
# file's tmpfs (TMPDIR) and the ctl directory (the kernel's working directory), which the
# guest's uid can write to until the jail is emptied (the kernel makes its umid directory by
# "up", its memory files before and just after it: TMPDIR stays until "disks").
JAIL_HIDDEN = "/run"

_SECCOMP = seccomp.compile_filter().hex()

# (what the header named, what it names now) when a boot had to put the header back
Repaired = tuple[bytes, str]


def _check(b: jail.Bind, what: str) -> None:
    try:
        jail.check_source(b)
    except jail.JailSetupError as e:
        raise JailError(f"{what}: {e}") from None


def name_base(guest: Guest, name: bytes, repaired: list[Repaired]) -> None:
    """Point the COW header at the base as the kernel will be told it, so that the kernel
    neither looks for nor prints any other path (path_requires_switch in ubd_kern.c). Only the
    path is written: the caller has checked the size and mtime against the base warden
    recorded (Guest.base_for_boot). A header that named neither that base nor the jail's name
    for it was rewritten by someone else, the guest most likely: that goes into `repaired`."""
    old = rebase.name_backing(guest.files.cow, name)
    if old is not None and old not in {JAIL_BASE.encode(), kernel_path(Path(guest.base or "/"))}:
        repaired.append((old, display(name)))


def unjailed(guest: Guest, repaired: list[Repaired]) -> None:
    """A guest without a jail runs as root: its control directory is root's alone (its
    sockets are 0600, see Supervisor._bind_sockets), its header names the recorded base."""
    files = guest.files
    os.chown(files.ctl, 0, 0)
    os.chmod(files.ctl, 0o700)
    name_base(guest, kernel_path(guest.base_for_boot()), repaired)


def prepare(
    guest: Guest, core: Core, extras: BootExtras, limits: cgroup.Limits, repaired: list[Repaired]
) -> jail.JailPlan:
    """Check everything, then claim the uid and hand the guest its files (blocking I/O)."""
    spec, files, layout = guest.spec, guest.files, core.layout
    host = core.fleet.host
    k = guest.kernel_path or kernel.resolve(layout, spec.kernel).path
    shim = kernel.xstate_shim(layout)
    binds: list[jail.Bind] = []
    named = {str(k): f"{JAIL_KERNEL_DIR}/{k.name}", str(shim): f"{JAIL_KERNEL_DIR}/{shim.name}"}
    for path in [str(k), *shared_objects(k), str(shim), *shared_objects(shim)]:
        # the loader and libraries keep their paths: the loader looks for them there
        b = jail.Bind(src=os.path.realpath(path), dst=named.get(path, path), exec=True)
        if all(x.dst != b.dst for x in binds):
            _check(b, f"machine {spec.name!r}: kernel {spec.kernel!r}")
            binds.append(b)
    base = guest.base_for_boot()
    check_image_link(base, f"machine {spec.name!r}: image {spec.image!r}")
    if not files.cow.exists() and not files.cow.is_symlink():
        # The kernel would create it, but inside the jail, where it would not last.
        disk_create.create(files.cow, base)
    if files.cow.is_symlink() or not files.cow.is_file():
        raise JailError(f"{files.cow} must be a regular file (the guest's COW disk)")
    name_base(guest, JAIL_BASE.encode(), repaired)
    tmpdir = f"{JAIL_HIDDEN}/{secrets.token_hex(12)}"
    ctl = f"{JAIL_HIDDEN}/{secrets.token_hex(12)}"
    others = [
        jail.Bind("/dev/null", "/dev/null", kind=jail.DEV, writable=True),
        # rng_init, a device initcall after the notify, opens it (the guest's hw_random)
        jail.Bind("/dev/random", "/dev/random", kind=jail.DEV, until=jail.AT_DISKS),
        jail.Bind(str(files.cow), JAIL_COW, writable=True, until=jail.AT_DISKS),
        jail.Bind(os.path.realpath(base), JAIL_BASE, until=jail.AT_DISKS),
        # The kernel's working directory: it made NAME/{pid,mconsole} there by "up", and
        # reaches notify and the replies by relative names afterwards, detached or not.
        jail.Bind(str(files.ctl), ctl, kind=jail.DIR, writable=True),
    ]
    for b in others:
        _check(b, f"machine {spec.name!r}")
    # The seed disk is (re)written after the hooks; the launcher checks it and hands it to
    # the guest's uid (0400: it holds password hashes and keys).
    binds += [*others, jail.Bind(str(files.seed), JAIL_SEED, until=jail.AT_DISKS, give=True)]
    uid = uids.allocate(layout, spec.name, host.uid_base, host.uid_count, guest.uid)
    if not readable_by(Path(os.path.realpath(base)), uid, uid):
        raise JailError(
            f"machine {spec.name!r}: image {base} is not readable by the guest's uid {uid} "
            "(the jailed kernel opens it as that uid): make it world-readable (chmod a+r)"
        )
    guest.uid = uid
    # The guest's own files: its COW disk, and the ctl directory where its kernel makes
    # NAME/{pid,mconsole} (group-writable and sticky: it cannot touch warden's sockets).
    os.chown(files.cow, uid, uid)
    os.chmod(files.cow, 0o600)
    os.chown(files.ctl, 0, uid)
    os.chmod(files.ctl, 0o1770)
    mount_point = files.root / "jail"
    mount_point.mkdir(mode=0o700, exist_ok=True)
    cow_size = files.cow.stat().st_size
    extras.env["TMPDIR"] = tmpdir
    extras.env["LD_PRELOAD"] = named[str(shim)]
    extras.paths[str(files.ctl)] = "."
    extras.paths[str(files.notify)] = files.notify.name
    extras.paths[str(k)] = named[str(k)]
    extras.paths[str(files.cow)] = JAIL_COW
    extras.paths[str(base)] = JAIL_BASE
    extras.paths[str(files.seed)] = JAIL_SEED
    fsize = max(cow_size, spec.memory + BRK_GAP_MAX + (16 << 20))
    extras.rlimits.update(
        {
            "core": (0, 0),
            "fsize": (fsize, fsize),
            "nofile": (NOFILE, NOFILE),
            "nproc": (limits.pids, limits.pids),
        }
    )
    return jail.JailPlan(
        name=spec.name,
        uid=uid,
        gid=uid,
        mount_point=str(mount_point),
        binds=binds,
        cwd=ctl,
        tmpdir=tmpdir,
        tmpdir_size=spec.memory + JAIL_TMPFS_SLACK,
        hidden=JAIL_HIDDEN,
        cpuinfo=cpuinfo(),
        seccomp=_SECCOMP,
    )
