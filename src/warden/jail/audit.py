"""`warden jail audit NAME`: what a guest's host processes can do, read from /proc as it is.

For every process of the guest's cgroup: uid and gid (real, effective, saved, filesystem),
supplementary groups, the five capability sets, no_new_privs, seccomp mode and filter count,
and every open fd. For the kernel: its namespaces beside the host's (the daemon's own), every
mount of its mount namespace, each file reachable under its root (a walk of /proc/PID/root,
which resolves in the kernel's own namespace), and what its working directory holds (the ctl
directory, which is not under its root once the jail is empty). The cgroup's limits and the
uid's claim complete the report. Read-only: nothing here changes the guest.
"""

import os
from pathlib import Path
from typing import Any

from warden import proc
from warden.daemon.seam import Guest
from warden.host import uids
from warden.host.cgroup import Hierarchy
from warden.paths import Layout

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup", "user", "time")
CAP_SETS = (("CapInh", "inheritable"), ("CapPrm", "permitted"), ("CapEff", "effective"),
            ("CapBnd", "bounding"), ("CapAmb", "ambient"))  # fmt: skip
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
MAX_ENTRIES = 10000


def known_files(sup: Guest) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) -> host path, for the files a guest's kernel is given: a file whose
    mount the jail detached reads as "/" through /proc/PID/fd, its inode still says which."""
    f = sup.files
    paths = [f.cow, f.seed, Path("/dev/null"), Path("/dev/random")]
    if sup.base:
        paths.append(Path(sup.base))
    if f.logs.exists():
        paths += sorted(f.logs.glob("kernel-*.log"))
    if f.lines.exists():
        paths += sorted(f.lines.iterdir())
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[(st.st_dev, st.st_ino)] = str(p)
    return out


def process(pid: int, known: dict[tuple[int, int], str] | None = None) -> dict[str, Any]:
    st = proc.status(pid)
    caps = {name: int(st.get(key, "0"), 16) for key, name in CAP_SETS}
    fds = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in sorted(os.listdir(fd_dir), key=int):
        try:
            entry: dict[str, Any] = {"fd": int(fd), "target": os.readlink(f"{fd_dir}/{fd}")}
            fst = os.stat(f"{fd_dir}/{fd}")
        except OSError:
            continue
        host = (known or {}).get((fst.st_dev, fst.st_ino))
        if host is not None and host != entry["target"]:
            entry["host_file"] = host
        fds.append(entry)
    seccomp = int(st.get("Seccomp", "0"))
    return {
        "pid": pid,
        "name": st.get("Name", "?"),
        "uid": [int(x) for x in st.get("Uid", "").split()],
        "gid": [int(x) for x in st.get("Gid", "").split()],
        "groups": [int(x) for x in st.get("Groups", "").split()],
        "capabilities": {k: f"{v:016x}" for k, v in caps.items()},
        "capability_count": sum(bin(v).count("1") for v in caps.values()),
        "no_new_privs": st.get("NoNewPrivs") == "1",
        "seccomp": SECCOMP_MODES.get(seccomp, str(seccomp)),
        "seccomp_filters": int(st.get("Seccomp_filters", "0")),
        "fds": fds,
    }


def namespaces(pid: int) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in NAMESPACES:
        try:
            guest = os.readlink(f"/proc/{pid}/ns/{kind}")
            host = os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            continue
        out[kind] = {"guest": guest, "host": host, "separate": guest != host}
    return out


def walk(top: str) -> list[str]:
    """Every path under `top` (not following links), relative to it, at most MAX_ENTRIES."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for name in sorted(dirnames + filenames):
            found.append(name if rel == "." else f"{rel}/{name}")
            if len(found) >= MAX_ENTRIES:
                return found
    return found


def _mounts(pid: int) -> list[str]:
    mounts = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        parts = line.split()
        sep = parts.index("-")
        mounts.append(f"{parts[4]} ({parts[sep + 1]}, {parts[5]})")
    return mounts


def audit(
    sup: Guest, layout: Layout, hierarchy: Hierarchy, jail_status: dict[str, Any]
) -> dict[str, Any]:
    pid = sup.pid
    report: dict[str, Any] = {
        "name": sup.name,
        "state": str(sup.state),
        "jail": sup.spec.jail,
        "jail_state": jail_status.get("state", "unknown"),
        "uid": sup.uid,
        "uid_claim": uids.owner(layout, sup.uid) if sup.uid is not None else None,
        "cgroup": {
            "path": str(sup.cgroup.path),
            "hierarchy": hierarchy.describe(),
            "limits": sup.cgroup.limits(),
        },
        "kernel_pid": pid,
    }
    if pid is None:
        report["processes"] = []
        return report
    procs = []
    known = known_files(sup)
    for p in sorted(sup.cgroup.pids()):
        try:
            procs.append(process(p, known))
        except OSError:
            continue  # ended while we read
    report["processes"] = procs
    report["namespaces"] = namespaces(pid)
    root = f"/proc/{pid}/root"
    host_root = os.stat("/")
    st = os.stat(root)
    if (st.st_dev, st.st_ino) == (host_root.st_dev, host_root.st_ino):
        report["root"] = {"host_root": True, "entries": None}
    else:
        report["root"] = {"host_root": False, "entries": walk(root)}
    report["cwd"] = {"path": os.readlink(f"/proc/{pid}/cwd"), "entries": None}
    if not report["root"]["host_root"]:
        report["cwd"]["entries"] = walk(f"/proc/{pid}/cwd")
    report["mounts"] = _mounts(pid)
    report["summary"] = {
        "processes": len(procs),
        "capabilities": sum(p["capability_count"] for p in procs),
        "uids": sorted({u for p in procs for u in p["uid"]}),
        "separate_namespaces": sorted(k for k, v in report["namespaces"].items() if v["separate"]),
        "files_under_root": (
            None if report["root"]["host_root"] else len(report["root"]["entries"])
        ),
        "seccomp": sorted({p["seccomp"] for p in procs}),
        "no_new_privs": all(p["no_new_privs"] for p in procs),
    }
    return report
