"""Empty jails for guest kernels (issue 4): what the launcher does to a kernel before its exec,
and the helper that empties a jail once the guest has booted.

Never called in the daemon: `namespace_flags`, `prepare_parent`, `enter` and `seal` run in the
launcher (warden.host.launch, a fresh process), `python -m warden.host.jail empty ...` is a
fresh helper process that joins one guest's mount namespace. See
docs/decisions/2026-11-29-cgroups-and-jails.md, "Jails".

What a jailed kernel gets, in order (the launcher has already joined the guest's cgroups and
started a session):

    prepare_parent  every file the jail will hold is checked (no symbolic link; a regular
                    file, a directory or a character device, as declared; binaries on a
                    filesystem that allows exec) and its inode noted; the child opens each with
                    O_PATH|O_NOFOLLOW, mounts from that fd and refuses any other inode, so a
                    path swapped after the checks cannot smuggle another file in
    unshare         new mount, ipc, uts, network and cgroup namespaces (the pid namespace is
                    the launcher's own doing); the network namespace stays empty: a guest's
                    network is a passed fd (vecN:transport=fd)
    enter (child)   the host's mounts made private; a tiny tmpfs mounted on the jail directory
                    becomes the root; each file is bind-mounted at its jail path (a neutral name:
                    nothing in the jail is named after a host path) with the least flags it
                    needs (ro, noexec, nosuid, nodev), a file marked `give` first handed to the
                    guest's uid (0400); TMPDIR is a tmpfs of its own, the guest uid's alone,
                    for UML's memory file; pivot_root; hostname = guest name
    seal (child)    every fd closed but the passed ones; ambient and bounding capability sets
                    cleared, supplementary groups dropped, gid and uid set (which clears the
                    permitted and effective sets), inheritable set cleared, no_new_privs, and
                    the seccomp filter if the plan has one; then the launcher execs the kernel

The kernel's working directory is the machine's ctl directory (bind-mounted): UML resolves
`uml_dir=.`, `mconsole=notify:notify` and the replies to warden's relative reply socket
against it, so after `empty` detaches the ctl mount from the root, the guest can no longer
reach it by any path (hostfs only builds absolute paths), yet the kernel still can.

`empty` with nothing to keep also remounts the root read-only: root in the guest can always
`mount -t hostfs none /mnt`, which shows the kernel's root, and then finds an empty, read-only
tmpfs of a few KiB (docs/decisions/2026-12-07-hostile-disks-and-jail.md).
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from warden.host import ns

# What a bind mount holds: decides the mount-point type and the check made on the source.
FILE, DIR, DEV = "file", "dir", "dev"
# When `empty` takes it away: at "up" (the kernel has exec'd and mapped what it needs) or
# once the guest has opened its disks and read its seed ("disks"). "up" is the mconsole notify,
# sent from a device initcall: what a later initcall opens (TMPDIR, /dev/random) waits for
# "disks", when init runs and every initcall is over (warden.jail.emptier).
AT_UP, AT_DISKS = "up", "disks"

CAP_VERSION_3 = 0x20080522
SYS_capset = 126
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class JailSetupError(Exception):
    """The launcher could not build the jail (reported to the daemon as the start failure)."""


@dataclass
class Bind:
    src: str  # host path, as checked by the daemon (opened with O_NOFOLLOW by the launcher)
    dst: str  # absolute path inside the jail
    kind: str = FILE  # FILE, DIR or DEV
    writable: bool = False
    exec: bool = False
    until: str = AT_UP  # AT_UP or AT_DISKS: when `empty` detaches it
    give: bool = False  # hand the file to the guest's uid (owner uid:gid, mode 0400) first


# The root tmpfs holds only mount points, their directories and /proc/cpuinfo (about 2 KiB):
# a few pages and inodes are all it may ever hold, whoever writes to it.
ROOT_SIZE = 64 << 10
ROOT_INODES = 64


@dataclass
class JailPlan:
    name: str  # the guest; also its hostname in its UTS namespace
    uid: int
    gid: int
    mount_point: str  # host directory the jail's tmpfs root is mounted on (privately)
    root_size: int = ROOT_SIZE  # bytes of the root tmpfs
    binds: list[Bind] = field(default_factory=list)
    cwd: str = "/"  # the kernel's working directory, inside the jail (the ctl bind mount)
    tmpdir: str = "/tmp"  # TMPDIR for UML's memory file: a tmpfs of its own (exec allowed)
    tmpdir_size: int = 0  # bytes of that tmpfs (the guest's memory and some slack)
    # A directory made 0711 once built: what is under it can be reached by its name (which the
    # kernel is given) but not listed, so hostfs in the guest cannot find it (the memory tmpfs
    # and the ctl directory are writable by the guest's uid until `empty` takes them away).
    hidden: str = ""
    cpuinfo: str = ""  # the lines of /proc/cpuinfo UML parses; written at /proc/cpuinfo
    seccomp: str = ""  # hex of a compiled BPF program (warden.host.seccomp), "" for none

    def kept_at_up(self) -> list[str]:
        """What the first emptying (at "up") leaves in place: the binds taken at "disks" and
        TMPDIR's tmpfs (UML's mem_mc_init makes a test memory file there after "up", and
        exits with status 1, silently, when it cannot)."""
        return [b.dst for b in self.binds if b.until == AT_DISKS] + [self.tmpdir]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JailPlan":
        raw = dict(raw)
        raw["binds"] = [Bind(**b) for b in raw.get("binds", [])]
        return cls(**raw)


def _plan(launch_plan: Any) -> JailPlan:
    return JailPlan.from_dict(launch_plan.jail)


# ---- checks shared by the daemon (clear errors before anything exists) and the launcher ----
def mount_of(path: str) -> tuple[str, set[str]]:
    """The mount point holding `path` and its options (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, opts = "/", set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        mnt = parts[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, opts = mnt, set(parts[5].split(","))
    return best, opts


def check_source(b: Bind) -> None:
    """Raise JailSetupError unless `b.src` is what the jail may bind-mount."""
    try:
        st = os.lstat(b.src)
    except OSError as e:
        raise JailSetupError(f"{b.src}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise JailSetupError(
            f"{b.src} is a symbolic link; the jail binds files by their real path only"
        )
    want = {FILE: stat.S_ISREG, DIR: stat.S_ISDIR, DEV: stat.S_ISCHR}[b.kind]
    if not want(st.st_mode):
        raise JailSetupError(f"{b.src} is not a {b.kind}")
    if b.exec and os.statvfs(b.src).f_flag & os.ST_NOEXEC:
        mnt, _ = mount_of(b.src)
        raise JailSetupError(
            f"{b.src} is on {mnt}, mounted noexec: the jailed kernel maps it executable, which "
            f"that filesystem refuses; put it on a filesystem that allows exec (or remount {mnt} "
            "without noexec)"
        )


# ---- the launcher's side --------------------------------------------------------------------
_checked: list[tuple[int, int]] = []  # (st_dev, st_ino) of each bind source, in plan order
_last_cap = [63]  # highest capability number, read by prepare_parent while /proc is there


def namespace_flags(launch_plan: Any) -> int:
    return ns.CLONE_NEWNS | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS | ns.CLONE_NEWNET | ns.CLONE_NEWCGROUP


def prepare_parent(launch_plan: Any) -> None:
    """Check every source before the namespaces exist, and remember which inode it is."""
    plan = _plan(launch_plan)
    _last_cap[0] = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    _checked.clear()
    for b in plan.binds:
        check_source(b)
        st = os.lstat(b.src)
        _checked.append((st.st_dev, st.st_ino))


def _open_checked(b: Bind, expect: tuple[int, int]) -> int:
    """An O_PATH fd of `b.src` in the new mount namespace (a bind mount's source must belong
    to the caller's namespace), refused unless it is the very inode prepare_parent checked."""
    fd = os.open(b.src, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != expect:
        os.close(fd)
        raise JailSetupError(f"{b.src} changed while the jail was being built")
    return fd


def _mkdirs(path: Path) -> None:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)


def _bind(fd: int, b: Bind, target: Path, owner: tuple[int, int]) -> None:
    _mkdirs(target.parent)
    if b.kind == DIR:
        target.mkdir(mode=0o755, exist_ok=True)
    else:
        target.touch(mode=0o600, exist_ok=True)
    if b.give:  # through the checked inode, not the path
        os.chown(f"/proc/self/fd/{fd}", *owner)
        os.chmod(f"/proc/self/fd/{fd}", 0o400)
    ns.mount(f"/proc/self/fd/{fd}", str(target), None, ns.MS_BIND)
    flags = ns.MS_REMOUNT | ns.MS_BIND | ns.MS_NOSUID
    if b.kind != DEV:
        flags |= ns.MS_NODEV
    if not b.exec:
        flags |= ns.MS_NOEXEC
    if not b.writable:
        flags |= ns.MS_RDONLY
    ns.mount(None, str(target), None, flags)


def enter(launch_plan: Any) -> None:
    """In the kernel-to-be (pid 1 of the new pid namespace), still root: build the root."""
    plan = _plan(launch_plan)
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)  # nothing propagates to the host
    root = Path(plan.mount_point)
    ns.mount(
        "warden-jail",
        str(root),
        "tmpfs",
        ns.MS_NOSUID | ns.MS_NODEV,
        f"mode=0755,size={plan.root_size},nr_inodes={ROOT_INODES}",
    )
    for b, expect in zip(plan.binds, _checked, strict=True):
        fd = _open_checked(b, expect)
        try:
            _bind(fd, b, root / b.dst.lstrip("/"), (plan.uid, plan.gid))
        finally:
            os.close(fd)
    tmp = root / plan.tmpdir.lstrip("/")
    _mkdirs(tmp)
    if plan.tmpdir_size:
        # Its own tmpfs, so that the root holds no open file (a read-only remount refuses
        # while one is open for writing, or unlinked and open, as UML's O_TMPFILE memory file
        # is) and so that `empty` can take it away at "up"; the guest's uid alone may use it.
        ns.mount(
            "warden-tmp",
            str(tmp),
            "tmpfs",
            ns.MS_NOSUID | ns.MS_NODEV,
            f"mode=0700,uid={plan.uid},gid={plan.gid},size={plan.tmpdir_size}",
        )
    else:
        os.chmod(tmp, 0o1777)
    if plan.hidden:
        os.chmod(root / plan.hidden.lstrip("/"), 0o711)
    if plan.cpuinfo:
        cpu = root / "proc" / "cpuinfo"
        _mkdirs(cpu.parent)
        cpu.write_text(plan.cpuinfo)
        os.chmod(cpu, 0o444)
    # pivot_root(".", "."): the old root ends up on top of the new one; detaching it leaves
    # the tmpfs alone as "/" (pivot_root(2), "NOTES").
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")
    socket.sethostname(plan.name)
    launch_plan.cwd = plan.cwd


def _close_other_fds(keep: set[int]) -> None:
    last = 2
    for fd in sorted(keep):
        if fd > last + 1:
            os.closerange(last + 1, fd)
        last = max(last, fd)
    os.closerange(last + 1, 1 << 20)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _clear_capabilities() -> None:
    """After setuid(non-zero): permitted and effective are empty already; clear the rest."""
    header = _CapHeader(CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(SYS_capset), ctypes.byref(header), ctypes.byref(data)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_privileges(uid: int, gid: int, last_cap: int) -> None:
    ns.prctl(ns.PR_CAP_AMBIENT, ns.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(last_cap + 1):
        ns.prctl(ns.PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _clear_capabilities()
    ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)


class _SockFprog(ctypes.Structure):
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (linux/filter.h)
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def load_seccomp(program_hex: str) -> None:
    """Install a compiled filter (warden.host.seccomp) on this process; needs no_new_privs."""
    prog = bytes.fromhex(program_hex)
    fprog = _SockFprog(len(prog) // 8, prog)
    ns.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def seal(launch_plan: Any, status_fd: int) -> None:
    """Last steps before the exec, after rlimits, stdio and chdir: fds, credentials, seccomp."""
    plan = _plan(launch_plan)
    _close_other_fds({0, 1, 2, status_fd, *launch_plan.keep_fds})
    drop_privileges(plan.uid, plan.gid, _last_cap[0])
    if plan.seccomp:
        load_seccomp(plan.seccomp)


# ---- emptying a booted guest's jail (a fresh helper process) ------------------------------
def _mounts_below_root(proc_self: int) -> list[str]:
    """Mount points in our mount namespace, as seen from our root (the jail has no /proc:
    `proc_self` is an fd of our /proc/PID directory opened before setns)."""
    fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_self)
    with os.fdopen(fd) as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        mnt = line.split()[4].replace("\\040", " ")
        if mnt != "/":
            out.append(mnt)
    return out


def _remove_tree_on(dev: int, top: str, keep: set[str]) -> list[str]:
    """Delete what the jail's own tmpfs holds below `top` (never crossing to another device)."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if p in keep or any(k.startswith(p + "/") for k in keep):
                continue
            if os.lstat(p).st_dev == dev:
                os.unlink(p)
                removed.append(p)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if p in keep or any(k.startswith(p + "/") for k in keep):
                continue
            st = os.lstat(p)
            if st.st_dev == dev and stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(OSError):  # not empty: it holds something kept
                    os.rmdir(p)
                    removed.append(p)
    return removed


def empty(pid: int, start_time: int, keep: list[str]) -> dict[str, Any]:
    """Detach every mount of the jail of kernel `pid` but those at `keep`, and delete the rest;
    with nothing to keep, remount the (then empty) root read-only as well.

    Runs in a fresh single-threaded process (setns(CLONE_NEWNS) refuses threaded callers).
    `start_time` (field 22 of /proc/PID/stat) guards against a recycled pid.
    """
    pidfd = os.pidfd_open(pid)
    with open(f"/proc/{pid}/stat") as f:
        if int(f.read().rsplit(")", 1)[1].split()[19]) != start_time:
            raise ProcessLookupError(f"pid {pid} is not the guest's kernel any more")
    mnt_ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    proc_self = os.open(f"/proc/{os.getpid()}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The pidfd still refers to the same process: the two fds above are its own.
    signal.pidfd_send_signal(pidfd, 0)
    ns.setns(mnt_ns, ns.CLONE_NEWNS)
    os.fchdir(root)
    os.chroot(".")
    os.chdir("/")
    keep_set = {os.path.normpath(k) for k in keep}
    detached = []
    for mnt in sorted(_mounts_below_root(proc_self), key=lambda m: m.count("/"), reverse=True):
        if mnt in keep_set:
            continue
        ns.umount2(mnt, ns.MNT_DETACH)
        detached.append(mnt)
    left = _mounts_below_root(proc_self)
    if any(m not in keep_set for m in left):
        raise RuntimeError(f"mounts still in the jail after detaching: {left}")
    removed = _remove_tree_on(os.lstat("/").st_dev, "/", keep_set)
    remaining = sorted(os.path.join(d, n) for d, dirs, files in os.walk("/") for n in dirs + files)
    sealed = False
    if not keep_set and not remaining:
        # The tmpfs options are the superblock's; the mount flags must be given again.
        flags = ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC
        ns.mount(None, "/", None, flags, f"size={ROOT_SIZE},nr_inodes={ROOT_INODES}")
        sealed = True
    return {"detached": detached, "removed": removed, "remaining": remaining, "sealed": sealed}


def main(argv: list[str]) -> int:
    """python -m warden.host.jail empty PID START_TIME [KEEP...]: JSON report on stdout."""
    if len(argv) < 3 or argv[0] != "empty":
        print("usage: python -m warden.host.jail empty PID START_TIME [KEEP...]", file=sys.stderr)
        return 2
    try:
        report = empty(int(argv[1]), int(argv[2]), argv[3:])
    except (OSError, RuntimeError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
