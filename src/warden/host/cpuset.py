"""A guest's CPUs: its cgroup's cpuset, and the CPU time its processes used.

Where the files are depends on the host's layout (warden.host.cgroup):

- pure v2: `cpuset.cpus` in the guest's group of the one tree (the cpuset controller is
  enabled in its ancestors' cgroup.subtree_control when the group is made);
- hybrid (this project's machines): the cpuset controller is bound to a v1 hierarchy
  (/sys/fs/cgroup/cpuset), so it cannot be enabled in the v2 tree (`+cpuset` in
  /sys/fs/cgroup/unified/cgroup.subtree_control fails with ENOENT); the guest has a group
  warden-INSTANCE/GUEST there too, which its processes join at exec (cgroup.Cgroup.all_paths).

Either way every host process of the guest is in that group, so one write moves them all
(the kernel resets each member's affinity to the new set). CPU time is read from `cpu.stat`
(usage_usec) of the guest's v2 group, which the kernel keeps even with no controller enabled.

CPU lists use the kernel's format ("0-2,5"), parsed and written here only.
"""

import os
import re
from pathlib import Path

from warden.errors import WardenError
from warden.host.cgroup import Cgroup, CgroupError, Hierarchy

_RANGE = re.compile(r"\A(\d{1,5})(?:-(\d{1,5}))?\Z")
MAX_CPUS = 8192  # far above any host; bounds a list read back from a file


class CpusetError(WardenError):
    pass


def parse_list(text: str) -> tuple[int, ...]:
    """The kernel's CPU list ("0-2,5", "" for none) as sorted CPU numbers."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return ()
    for part in text.split(","):
        m = _RANGE.fullmatch(part)
        if m is None:
            raise CpusetError(f"{text!r} is not a CPU list (like 0-2,5): bad part {part!r}")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo or hi >= MAX_CPUS:
            raise CpusetError(f"{text!r} is not a CPU list: range {part!r}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def format_list(cpus: tuple[int, ...] | list[int]) -> str:
    """CPU numbers in the kernel's list format, ranges folded: (0, 1, 2, 5) -> "0-2,5"."""
    parts: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _dir(cg: Cgroup) -> Path | None:
    """The guest's group that holds cpuset.cpus (None: this host has no cpuset controller)."""
    if cg.hierarchy.mode == "v2":
        return cg.path
    mnt = cg.hierarchy.v1.get("cpuset")
    return mnt / cg.rel if mnt is not None else None


def available(hierarchy: Hierarchy) -> bool:
    """Whether guests can be given CPUs on this host (a cpuset controller warden can use)."""
    if hierarchy.mode == "v2":
        return "cpuset" in (hierarchy.unified / "cgroup.controllers").read_text().split()
    return "cpuset" in hierarchy.v1


def host_cpus(hierarchy: Hierarchy) -> tuple[int, ...]:
    """The CPUs guests may be given: those of the cpuset that warden's groups are made in
    (the top of the hierarchy), or, with no cpuset controller, the daemon's own affinity."""
    if hierarchy.mode == "v2":
        f = hierarchy.unified / "cpuset.cpus.effective"
    else:
        mnt = hierarchy.v1.get("cpuset")
        f = mnt / "cpuset.effective_cpus" if mnt is not None else Path("/nonexistent")
    try:
        cpus = parse_list(f.read_text())
    except OSError:
        cpus = ()
    return cpus or tuple(sorted(os.sched_getaffinity(0)))


def set_cpus(cg: Cgroup, cpus: tuple[int, ...]) -> None:
    """Give every process of the guest (now and later) exactly `cpus`."""
    d = _dir(cg)
    if d is None:
        raise CpusetError(f"this host has no cpuset controller: {cg.hierarchy.describe()}")
    try:
        (d / "cpuset.cpus").write_text(format_list(cpus))
    except OSError as e:
        raise CgroupError(
            f"writing {format_list(cpus)!r} to {d / 'cpuset.cpus'}: {e.strerror}"
        ) from None


def cpus_of(cg: Cgroup) -> tuple[int, ...] | None:
    """The guest's cpuset as the kernel has it (None: no group, or no cpuset controller)."""
    d = _dir(cg)
    if d is None:
        return None
    try:
        return parse_list((d / "cpuset.cpus").read_text())
    except (OSError, CpusetError):
        return None


def usage_usec(cg: Cgroup) -> int | None:
    """CPU time every process of the guest used so far, in microseconds (None: group gone)."""
    return group_usage_usec(cg.path)


def group_usage_usec(group: Path) -> int | None:
    """The same for any v2 group (a guest's, or warden-INSTANCE for all of a home's guests)."""
    try:
        text = (group / "cpu.stat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def busy_per_cpu(stat_text: str) -> dict[int, int]:
    """Busy time per CPU in clock ticks, from the text of /proc/stat (all but idle and
    iowait), to tell how much of each CPU other work uses."""
    out: dict[int, int] = {}
    for line in stat_text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        parts = line.split()
        try:
            cpu = int(parts[0][3:])
            ticks = [int(x) for x in parts[1:9]]
        except (ValueError, IndexError):
            continue
        # user nice system idle iowait irq softirq steal
        out[cpu] = sum(ticks) - ticks[3] - ticks[4]
    return out
