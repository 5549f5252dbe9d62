"""What a guest's jail is made of, worked out before a boot: cgroup limits and rlimits, the
files the kernel binary needs (ldd), the CPU facts UML reads, and the checks of image paths.
"""

import os
import stat
import subprocess
from pathlib import Path

from warden.errors import WardenError
from warden.host import cgroup

# cgroup limits (docs/decisions/2026-11-29-cgroups-and-jails.md, "cgroups": the overhead was
# measured, see there).
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


def cpuinfo() -> str:
    """The two lines of the host's /proc/cpuinfo UML reads at boot (flags, cache alignment)."""
    keep = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "cache_alignment")):
                keep.append(line)
            if not line.strip():
                break  # the first CPU is enough
    return "".join(keep)


def readable_by(path: Path, uid: int, gid: int) -> bool:
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
