"""One cgroup per guest: every process of a guest, to count, freeze, limit and kill at once.

Two host layouts are supported (see docs/decisions/2026-11-29-cgroups-and-jails.md, "cgroups"):

- pure v2 (systemd's default today): one tree at /sys/fs/cgroup with every controller;
- hybrid (this project's CI machines): a controller-less v2 tree at /sys/fs/cgroup/unified that
  still offers cgroup.kill, cgroup.freeze and cgroup.events, beside v1 hierarchies
  /sys/fs/cgroup/{memory,pids,cpu,...} for limits.

Kill, freeze and "is anything left" always go through the v2 tree; limits go to whichever
hierarchy has the controller. A guest's groups are named warden-INSTANCE/GUEST in every
hierarchy, INSTANCE being the WARDEN_HOME's short hash, so homes never collide.
"""

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from warden.errors import WardenError

CGROUP_ROOT = Path(os.environ.get("WARDEN_CGROUP_ROOT", "/sys/fs/cgroup"))
EMPTY_POLL = 0.002  # seconds between looks at cgroup.events while a group empties


class CgroupError(WardenError):
    pass


@dataclass(frozen=True)
class Hierarchy:
    """Where the v2 tree is and which v1 controllers are mounted (and where)."""

    mode: str  # "v2" or "hybrid"
    unified: Path
    v1: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        if self.mode == "v2":
            return f"cgroup v2 at {self.unified} (all controllers in one tree)"
        ctl = ", ".join(sorted(self.v1)) or "none"
        return f"hybrid: cgroup v2 at {self.unified} for kill/freeze; v1 controllers: {ctl}"


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        opts = set(parts[3].split(","))
        out.append((parts[2], Path(parts[1]), parts[0], opts))
    return out


def detect(root: Path = CGROUP_ROOT) -> Hierarchy:
    """The host's cgroup layout; CgroupError when there is no usable v2 tree."""
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for fstype, mnt, _src, opts in _mounts():
        if not str(mnt).startswith(str(root)):
            continue
        if fstype == "cgroup2":
            unified = mnt
        elif fstype == "cgroup":
            for ctl in ("memory", "pids", "cpu", "cpuset", "freezer"):
                if ctl in opts:
                    v1[ctl] = mnt
    if unified is None:
        raise CgroupError(
            f"no cgroup v2 hierarchy is mounted under {root}: warden needs one to kill and "
            "freeze guests (mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with "
            "systemd.unified_cgroup_hierarchy=1)"
        )
    if not (unified / "cgroup.procs").exists():
        raise CgroupError(f"{unified} is not a usable cgroup v2 tree (no cgroup.procs)")
    mode = "v2" if unified == root else "hybrid"
    return Hierarchy(mode=mode, unified=unified, v1=v1)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(f"writing {value!r} to {path}: {e.strerror}") from None


@dataclass(frozen=True)
class Limits:
    """What one guest may use (docs/decisions/2026-11-29-cgroups-and-jails.md, "cgroups": how
    the numbers are chosen)."""

    memory: int  # bytes: the guest's memory plus the host-side overhead of its processes
    pids: int  # host processes (a UML guest has one per address space, plus a few helpers)
    cpu_weight: int  # 1..10000, cgroup v2 semantics (100 = the default share)

    def files(self, hierarchy: "Hierarchy") -> list[tuple[str, str, str]]:
        """(controller, file, value) for each limit, in the layout of `hierarchy`."""
        if hierarchy.mode == "v2":
            return [
                ("memory", "memory.max", str(self.memory)),
                ("pids", "pids.max", str(self.pids)),
                ("cpu", "cpu.weight", str(self.cpu_weight)),
            ]
        # v1: cpu.shares is 1024 for the default share where v2's cpu.weight is 100.
        return [
            ("memory", "memory.limit_in_bytes", str(self.memory)),
            ("pids", "pids.max", str(self.pids)),
            ("cpu", "cpu.shares", str(max(2, self.cpu_weight * 1024 // 100))),
        ]


class Cgroup:
    """The groups of one guest in every hierarchy warden uses."""

    def __init__(self, hierarchy: Hierarchy, instance: str, name: str):
        self.hierarchy = hierarchy
        self.rel = Path(f"warden-{instance}") / name
        self.path = hierarchy.unified / self.rel

    def _v1(self, controller: str) -> Path | None:
        mnt = self.hierarchy.v1.get(controller)
        return mnt / self.rel if mnt is not None else None

    def all_paths(self) -> list[Path]:
        paths = [self.path]
        for ctl in ("memory", "pids", "cpu", "cpuset"):
            p = self._v1(ctl)
            if p is not None and p not in paths:
                paths.append(p)
        return paths

    def create(self) -> None:
        for p in self.all_paths():
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CgroupError(f"creating cgroup {p}: {e.strerror}") from None
        if self.hierarchy.mode == "v2":
            self._enable_v2_controllers()
        else:
            self._fill_v1_cpuset()

    def _fill_v1_cpuset(self) -> None:
        # A new v1 cpuset group starts with no CPUs and no memory nodes, and the kernel refuses
        # to put a process into it (ENOSPC) until both are set: give the instance group and
        # the guest's group their parent's, which the cpu feature narrows before the boot.
        guest = self._v1("cpuset")
        if guest is None:
            return
        for d in (guest.parent, guest):
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (d / name).read_text().strip():
                    _write(d / name, (d.parent / name).read_text().strip())

    def _enable_v2_controllers(self) -> None:
        # Controllers must be enabled in every ancestor's subtree_control to reach the leaf.
        parent = self.path.parent
        available = (parent.parent / "cgroup.controllers").read_text().split()
        wanted = [c for c in ("memory", "pids", "cpu", "cpuset") if c in available]
        for anc in (parent.parent, parent):
            for c in wanted:
                with contextlib.suppress(CgroupError):
                    _write(anc / "cgroup.subtree_control", f"+{c}")

    def procs_files(self) -> list[Path]:
        return [p / "cgroup.procs" for p in self.all_paths()]

    def pids(self) -> list[int]:
        """Every process in the guest's group (v2 tree: it includes v1-only joins too)."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    def populated(self) -> bool:
        try:
            for line in (self.path / "cgroup.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
        except FileNotFoundError:
            return False
        return bool(self.pids())

    def kill(self) -> None:
        """SIGKILL every process of the guest at once (cgroup.kill, Linux >= 5.14)."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            _write(kill_file, "1")
            return
        # Older kernels: freeze so nothing forks, signal everyone, thaw so they can die.
        self.freeze()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.thaw()

    def freeze(self) -> None:
        _write(self.path / "cgroup.freeze", "1")

    def thaw(self) -> None:
        _write(self.path / "cgroup.freeze", "0")

    def frozen(self) -> bool:
        try:
            for line in (self.path / "cgroup.events").read_text().splitlines():
                if line.startswith("frozen "):
                    return line.split()[1] == "1"
        except FileNotFoundError:
            pass
        return False

    def wait_empty(self, timeout: float = 5.0) -> bool:
        """Wait until no process is left (blocking: off the event loop, see `emptied`)."""
        deadline = time.monotonic() + timeout
        while self.populated():
            if time.monotonic() > deadline:
                return False
            time.sleep(EMPTY_POLL)
        return True

    async def emptied(self, timeout: float = 5.0) -> bool:
        """wait_empty for the event loop: the same polls, with the loop free between them."""
        deadline = time.monotonic() + timeout
        while self.populated():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(EMPTY_POLL)
        return True

    def remove(self) -> None:
        """Remove the guest's (empty) groups, and the instance group when it is empty too."""
        for p in self.all_paths():
            for d in (p, p.parent):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    break  # busy (still has members or siblings): leave it

    def exists(self) -> bool:
        return self.path.exists()

    def _limit_dir(self, controller: str) -> Path | None:
        if self.hierarchy.mode == "v2":
            return self.path
        return self._v1(controller)

    def set_limits(self, limits: Limits) -> list[str]:
        """Write every limit the host's hierarchies can hold; return the controllers that are
        not available (their limits are not enforced; `warden jail audit` shows it)."""
        missing = []
        for controller, name, value in limits.files(self.hierarchy):
            d = self._limit_dir(controller)
            if d is None or not (d / name).exists():
                missing.append(controller)
                continue
            _write(d / name, value)
        return missing

    def limits(self) -> dict[str, str]:
        """The limit files as the kernel reports them now (for audits and tests)."""
        out: dict[str, str] = {}
        for controller, name, _ in Limits(0, 0, 100).files(self.hierarchy):
            d = self._limit_dir(controller)
            if d is not None:
                with contextlib.suppress(OSError):
                    out[name] = (d / name).read_text().strip()
        return out

    def peak_memory(self) -> int | None:
        """Highest memory use of the group so far, in bytes (None where the host cannot say)."""
        d = self._limit_dir("memory")
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if d is not None and (d / name).exists():
                return int((d / name).read_text())
        return None


def join(procs_files: list[str], pid: int = 0) -> None:
    """Move `pid` (0: the caller) into each cgroup.procs given; used by the launcher."""
    for f in procs_files:
        _write(Path(f), str(pid or os.getpid()))
