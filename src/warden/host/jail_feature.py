"""The jail feature (issue 4): every guest gets a cgroup with limits, and, unless its fleet
entry says `jail = false`, an empty jail (warden.host.jail) under a uid of its own.

install(daemon) adds:
- JailHook, a BootHook: before each boot it sets the cgroup limits, removes the previous
  boot's umid directory, points the COW header at the base warden recorded (as the kernel will
  be told it: the header is guest-written, see docs/security.md), and for a jailed guest checks
  every file the jail will hold, gives the guest its uid (warden.host.uids), hands its COW
  file, seed and ctl directory to that uid, and puts the jail plan, TMPDIR, rlimits and the
  kernel's view of its paths into the boot's extras; once the kernel is up it empties the jail
  (see Emptier). Inside the jail every file has a neutral name (JAIL_*): nothing the guest
  could ever see there is named after a host path;
- JailService, which empties the jails of guests a restarted daemon re-attached to;
- GET /v1/machines/{name}/jail: `warden jail audit` (warden.host.jail_audit).
"""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from warden.daemon import machine as m
from warden.daemon.context import BootExtras
from warden.disk import create as disk_create
from warden.disk import rebase
from warden.disk.backing import kernel_path
from warden.disk.diff import display
from warden.errors import MconsoleError, WardenError
from warden.host import cgroup, jail, seccomp, uids
from warden.spec.fleet import Fleet
from warden.tasks import spawn
from warden.uml import kernel, mconsole

if TYPE_CHECKING:
    from warden.daemon.core import Daemon
    from warden.daemon.supervisor import Supervisor

log = logging.getLogger("warden.jail")

# cgroup limits (docs/architecture.md, "cgroups": the overhead was measured, see there).
MEMORY_OVERHEAD = 32 << 20  # host memory of a guest beyond its mem=: UML's own heap and
MEMORY_OVERHEAD_PER_GIB = 16 << 20  # stacks, page tables of its processes, ubd bitmaps
PIDS_MAX = 1024
CPU_WEIGHT = 100
# rlimits of a jailed kernel
NOFILE = 1024
# UML grows its memory file by the gap between its binary and its randomised brk
# ("Adding N bytes to physical memory to account for exec-shield gap", arch/um/kernel/
# um_arch.c); x86-64 randomises brk within 1 GiB (arch_randomize_brk).
BRK_GAP_MAX = 1 << 30
JAIL_TMPFS_SLACK = 64 << 20
# Emptying: how long a guest may take from "up" to having read its seed disk.
SEED_WAIT = 120.0
POLL = 0.2
HELPER_TIMEOUT = 30.0
# Where the kernel sees its files inside the jail: neutral names, the same for every guest, so
# that nothing under the jail's root (which hostfs shows to root in the guest, and which the
# kernel prints in messages the guest can read) tells a host path, a home or an image name.
JAIL_KERNEL_DIR = "/kernel"  # the kernel binary and the xstate shim, under their file names
JAIL_COW = "/disk/cow"
JAIL_BASE = "/disk/base"
JAIL_SEED = "/disk/seed"
# Under a directory that cannot be listed (0711), with names drawn for each boot: the memory
# file's tmpfs (TMPDIR) and the ctl directory (the kernel's working directory), which the
# guest's uid can write to until "up" (the kernel makes its umid directory and memory file).
JAIL_HIDDEN = "/run"


_SECCOMP = seccomp.compile_filter().hex()


class JailError(WardenError):
    """A jail cannot be built for this guest as configured."""


def limits_for(memory: int) -> cgroup.Limits:
    overhead = MEMORY_OVERHEAD + MEMORY_OVERHEAD_PER_GIB * -(-memory // (1 << 30))
    return cgroup.Limits(memory=memory + overhead, pids=PIDS_MAX, cpu_weight=CPU_WEIGHT)


# ---- what the kernel binary needs ----------------------------------------------------------
_ldd_cache: dict[tuple[str, int, int], list[str]] = {}


def shared_objects(binary: Path) -> list[str]:
    """The loader and libraries `binary` needs, as the paths the loader opens them at."""
    st = binary.stat()
    key = (str(binary), st.st_mtime_ns, st.st_size)
    if key in _ldd_cache:
        return _ldd_cache[key]
    res = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    out: list[str] = []
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            parts = line.split()
            if "=>" in parts:
                target = parts[parts.index("=>") + 1]
                if target.startswith("/"):
                    out.append(target)
            elif parts and parts[0].startswith("/"):
                out.append(parts[0])  # the loader itself
    _ldd_cache[key] = out
    return out


def _cpuinfo() -> str:
    """The two lines of the host's /proc/cpuinfo UML reads at boot (flags, cache alignment)."""
    keep = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "cache_alignment")):
                keep.append(line)
            if not line.strip():
                break  # the first CPU is enough
    return "".join(keep)


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def check_image_link(image: Path, field: str) -> None:
    """An image path may be a link only to a file in its own directory (as images/NAME.img is):
    the jail binds the file the link names, and a link leading elsewhere would put a file into
    the guest that the fleet file does not name."""
    if not image.is_symlink():
        return
    target = Path(os.path.realpath(image))
    if target.parent != Path(os.path.realpath(image.parent)):
        raise JailError(
            f"{field}: {image} is a symbolic link to {target}, outside {image.parent}; a jailed "
            f"guest gets exactly the file its fleet entry names: give the real path ({target}), "
            "or copy the image next to the link"
        )


def _check(b: jail.Bind, what: str) -> None:
    try:
        jail.check_source(b)
    except jail.JailSetupError as e:
        raise JailError(f"{what}: {e}") from None


# ---- the hook --------------------------------------------------------------------------------
class JailHook:
    name = "jail"

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.emptiers: dict[str, asyncio.Task[None]] = {}
        self.status: dict[str, dict[str, Any]] = {}  # per guest: the jail's state this boot
        self._repaired: dict[str, tuple[bytes, str]] = {}  # header names put back this boot

    async def before_boot(self, sup: "Supervisor", extras: BootExtras) -> None:
        spec = sup.spec
        limits = limits_for(spec.memory)
        missing = sup.cgroup.set_limits(limits)
        if missing:
            sup.ctx.event(sup.name, "cgroup-limits-missing", controllers=",".join(missing))
        # UML refuses a umid directory whose pid file names a live process; as pid 1 of its
        # namespace it always finds "1" alive (itself), so the previous boot's directory must go.
        shutil.rmtree(sup.files.ctl / sup.name, ignore_errors=True)
        self.status[sup.name] = {"jailed": spec.jail, "state": "booting" if spec.jail else "off"}
        loop = asyncio.get_running_loop()
        try:
            if not spec.jail:
                await loop.run_in_executor(None, self._unjailed, sup)
                return
            plan = await loop.run_in_executor(None, self._plan, sup, extras, limits)
            extras.jail = plan.to_dict()
        finally:
            repaired = self._repaired.pop(sup.name, None)  # an event is for the loop's thread
            if repaired is not None:
                old, new = repaired
                sup.ctx.event(sup.name, "cow-header-repaired", named=display(old), now=new)

    def _unjailed(self, sup: "Supervisor") -> None:
        """A guest without a jail runs as root: its control directory is root's alone (its
        sockets are 0600, see Supervisor._bind_sockets), its header names the recorded base."""
        files = sup.files
        os.chown(files.ctl, 0, 0)
        os.chmod(files.ctl, 0o700)
        self._name_base(sup, kernel_path(sup._base_for_boot()))

    def _name_base(self, sup: "Supervisor", name: bytes) -> None:
        """Point the COW header at the base as the kernel will be told it, so that the kernel
        neither looks for nor prints any other path (path_requires_switch in ubd_kern.c).
        Only the path is written: the caller has checked the size and mtime against the base
        warden recorded (Supervisor._base_for_boot). A header that named neither that base nor
        the jail's name for it was rewritten by someone else, the guest most likely: an event
        records what it said."""
        old = rebase.name_backing(sup.files.cow, name)
        if old is not None and old not in {JAIL_BASE.encode(), kernel_path(Path(sup.base or "/"))}:
            self._repaired[sup.name] = (old, display(name))

    def _plan(self, sup: "Supervisor", extras: BootExtras, limits: cgroup.Limits) -> jail.JailPlan:
        """Check everything, then claim the uid and hand the guest its files (blocking I/O)."""
        ctx, spec, files = sup.ctx, sup.spec, sup.files
        host = ctx.fleet.host
        k = sup.kernel_path or kernel.resolve(ctx.layout, spec.kernel).path
        shim = kernel.xstate_shim(ctx.layout)
        binds: list[jail.Bind] = []
        named = {str(k): f"{JAIL_KERNEL_DIR}/{k.name}", str(shim): f"{JAIL_KERNEL_DIR}/{shim.name}"}
        for path in [str(k), *shared_objects(k), str(shim), *shared_objects(shim)]:
            # the loader and libraries keep their paths: the loader looks for them there
            b = jail.Bind(src=os.path.realpath(path), dst=named.get(path, path), exec=True)
            if all(x.dst != b.dst for x in binds):
                _check(b, f"machine {spec.name!r}: kernel {spec.kernel!r}")
                binds.append(b)
        base = sup._base_for_boot()
        check_image_link(base, f"machine {spec.name!r}: image {spec.image!r}")
        if not files.cow.exists() and not files.cow.is_symlink():
            # The kernel would create it, but inside the jail, where it would not last.
            disk_create.create(files.cow, base)
        if files.cow.is_symlink() or not files.cow.is_file():
            raise JailError(f"{files.cow} must be a regular file (the guest's COW disk)")
        self._name_base(sup, JAIL_BASE.encode())
        tmpdir = f"{JAIL_HIDDEN}/{secrets.token_hex(12)}"
        ctl = f"{JAIL_HIDDEN}/{secrets.token_hex(12)}"
        others = [
            jail.Bind("/dev/null", "/dev/null", kind=jail.DEV, writable=True),
            jail.Bind("/dev/random", "/dev/random", kind=jail.DEV),
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
        uid = uids.allocate(ctx.layout, spec.name, host.uid_base, host.uid_count, sup.uid)
        if not _readable_by(Path(os.path.realpath(base)), uid, uid):
            raise JailError(
                f"machine {spec.name!r}: image {base} is not readable by the guest's uid {uid} "
                "(the jailed kernel opens it as that uid): make it world-readable (chmod a+r)"
            )
        sup.uid = uid
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
            cpuinfo=_cpuinfo(),
            seccomp=_SECCOMP,
        )

    async def after_launch(self, sup: "Supervisor", pid: int) -> None:
        return None

    async def on_up(self, sup: "Supervisor") -> None:
        if sup.spec.jail and self.status.get(sup.name, {}).get("state") == "booting":
            self.start_emptier(sup)

    async def after_exit(self, sup: "Supervisor") -> None:
        task = self.emptiers.pop(sup.name, None)
        if task is not None:
            task.cancel()
        if sup.name in self.status:
            self.status[sup.name]["state"] = "gone"

    def start_emptier(self, sup: "Supervisor") -> None:
        old = self.emptiers.pop(sup.name, None)
        if old is not None:
            old.cancel()
        self.emptiers[sup.name] = spawn(Emptier(self, sup).run(), f"jail-empty:{sup.name}")


# ---- emptying the jail once the guest is up ----------------------------------------------
class Emptier:
    """Takes everything out of one booted guest's jail, in two steps.

    At "up" (the mconsole notify, sent early in the kernel's boot) the kernel has exec'd and
    mapped its binary, libraries and shim, created its memory file (on its own tmpfs), opened
    /dev/random and made its umid directory in ctl: those go, the ctl mount and the memory
    tmpfs included (the kernel keeps both through its working directory and its fds). Its disks
    it opens by path when a block device is first opened, the seed disk only when the guest
    mounts it: those stay until the guest's hostname (read through the mconsole) is its name,
    which warden's images set just after unmounting the seed, and the kernel holds the COW and
    base open; or until SEED_WAIT has passed. Then the rest goes and the root is remounted
    read-only: it is empty, and hostfs in the guest shows an empty, read-only directory.
    """

    def __init__(self, hook: JailHook, sup: "Supervisor"):
        self.hook = hook
        self.sup = sup
        self.pid = sup.machine.pid
        self.start = sup.pid_start
        self.boot = sup.boot

    def _same_boot(self) -> bool:
        s = self.sup
        return (
            s.machine.pid == self.pid
            and s.boot == self.boot
            and s.machine.state in (m.State.RUNNING, m.State.PAUSED, m.State.STARTING)
        )

    def _status(self, **kv: Any) -> None:
        self.hook.status.setdefault(self.sup.name, {}).update(kv)

    async def run(self) -> None:
        if self.pid is None or self.start is None:
            return
        t0 = time.monotonic()
        files = self.sup.files
        keep = [JAIL_COW, JAIL_SEED, JAIL_BASE]
        try:
            first = await self._helper(keep)
            self._status(state="disks", detached_at_up=first.get("detached", []))
            deadline = time.monotonic() + SEED_WAIT
            reason = "timeout"
            while time.monotonic() < deadline:
                if not self._same_boot():
                    return
                if self.sup.machine.state is m.State.RUNNING and await self._seed_read():
                    reason = "seed read"
                    break
                await asyncio.sleep(POLL)
            if not self._same_boot():
                return
            second = await self._helper([])
            with contextlib.suppress(FileNotFoundError):
                (files.ctl / self.sup.name / "pid").unlink()  # warden never reads it
            seconds = round(time.monotonic() - t0, 3)
            self._status(
                state="empty",
                remaining=second.get("remaining", []),
                sealed=second.get("sealed", False),
                why=reason,
            )
            self.sup.ctx.event(
                self.sup.name,
                "jail-emptied",
                after=f"{seconds}s",
                why=reason,
                remaining=len(second.get("remaining", [])),
            )
        except asyncio.CancelledError:
            raise
        except (WardenError, OSError) as e:
            if self._same_boot():
                self._status(state="error", error=str(e))
                self.sup.ctx.event(self.sup.name, "jail-empty-failed", error=str(e))
            else:
                log.debug("%s: emptying stopped, the guest is gone: %s", self.sup.name, e)

    async def _seed_read(self) -> bool:
        try:
            name = mconsole.proc_text(await self.sup.request("proc sys/kernel/hostname", 2.0))
        except (MconsoleError, WardenError):
            return False
        if name.strip() != self.sup.guest_hostname:
            return False
        return await asyncio.get_running_loop().run_in_executor(None, self._disks_held)

    def _disks_held(self) -> bool:
        """The kernel holds its COW and base open, and not its seed (the guest let it go)."""
        files = self.sup.files
        want = {}
        for p in (files.cow, Path(self.sup.base or files.cow)):
            st = p.stat()
            want[(st.st_dev, st.st_ino)] = str(p)
        seed = files.seed.stat()
        held = set()
        fd_dir = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                st = os.stat(f"{fd_dir}/{fd}")
                held.add((st.st_dev, st.st_ino))
        return set(want) <= held and (seed.st_dev, seed.st_ino) not in held

    async def _helper(self, keep: list[str]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warden.host.jail",
            "empty",
            str(self.pid),
            str(self.start),
            *keep,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), HELPER_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        try:
            report: dict[str, Any] = json.loads(out.decode() or "{}")
        except ValueError:
            report = {"error": f"exit {proc.returncode}: {err.decode(errors='replace')[-500:]}"}
        if "error" in report:
            raise WardenError(f"{self.sup.name}: emptying the jail failed: {report['error']}")
        return report


class JailService:
    """Empties the jails of guests a restarted daemon found running (no "up" comes for them)."""

    def __init__(self, daemon: "Daemon", hook: JailHook):
        self.daemon = daemon
        self.hook = hook

    def check_fleet(self, fleet: Fleet) -> None:
        """Refuse, before anything is applied, image paths a jail would not take."""
        problems = []
        for spec in fleet.machines:
            if spec.jail and ("/" in spec.image or spec.image.endswith(".img")):
                try:
                    check_image_link(Path(spec.image).absolute(), f"machine {spec.name!r}: image")
                except JailError as e:
                    problems.append(f"{fleet.source}: {e}")
        if problems:
            raise JailError("\n".join(problems))

    async def start(self) -> None:
        for sup in self.daemon.sups.values():
            if sup.spec.jail and sup.machine.state in (m.State.RUNNING, m.State.PAUSED):
                self.hook.status[sup.name] = {"jailed": True, "state": "reattached"}
                self.hook.start_emptier(sup)

    async def stop(self) -> None:
        for task in list(self.hook.emptiers.values()):
            task.cancel()
        for task in list(self.hook.emptiers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.hook.emptiers.clear()


def install(daemon: "Daemon") -> None:
    from warden.host import jail_audit

    hook = JailHook(daemon)
    daemon.c.hooks.append(hook)
    daemon.services.append(JailService(daemon, hook))

    async def audit(request: web.Request) -> web.Response:
        sup = daemon.sup(request.match_info["name"])
        loop = asyncio.get_running_loop()
        report = await loop.run_in_executor(
            None, jail_audit.audit, sup, hook.status.get(sup.name, {})
        )
        return web.json_response(report)

    daemon.add_route("GET", "machines/{name}/jail", audit)
