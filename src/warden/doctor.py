"""`warden doctor`: what this host offers warden, checked, with what to do about each gap."""

import json
import os
import shutil
from dataclasses import asdict, dataclass

from warden.disk import hostfile
from warden.errors import WardenError
from warden.host import cgroup, cpuset
from warden.paths import Layout
from warden.uml import kernel


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _xstate_note(flags: set[str]) -> str:
    if "amx_tile" in flags:
        return "AMX present: the stock kernel needs warden's xstate shim (loaded automatically)"
    return "no AMX: the xstate shim is loaded but not needed"


def _cpu_checks() -> list[Check]:
    flags = _cpu_flags()
    out = [
        Check(
            "avx-512",
            True,
            "present: Debian's UML 6.1 loses AVX-512 registers across guest signals; warden's "
            "images keep glibc and OpenSSL off AVX-512 on the stock kernel, warden-built "
            "kernels save the whole state (docs/decisions/2026-11-29-xstate-shim.md)"
            if "avx512f" in flags
            else "absent: nothing to work around",
        ),
        Check(
            "cpuid faulting",
            True,
            "present: the honeypot kernel can hide the hypervisor from guests' CPUID"
            if "cpuid_fault" in flags
            else "absent: guests' CPUID shows the host CPU (and any hypervisor it runs under)",
        ),
    ]
    return out


def _net_checks() -> list[Check]:
    bridge_nf = os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables")
    return [
        Check(
            "br_netfilter",
            True,
            "loaded: guest-to-guest traffic on a bridge passes the egress rules"
            if bridge_nf
            else "not loaded yet: warden loads it when it builds a network (modprobe br_netfilter)",
        )
    ]


def _cpuset_check(h: cgroup.Hierarchy) -> Check:
    """Whether guests get a CPU each (warden.cpu): a cpuset controller warden can use."""
    cpus = cpuset.format_list(cpuset.host_cpus(h))
    if not cpuset.available(h):
        return Check(
            "cpu placement",
            False,
            f"no cpuset controller ({h.describe()}): guests run unplaced, each system call of "
            "a guest pays a cross-CPU wake-up",
        )
    where = "the v2 tree" if h.mode == "v2" else f"the v1 hierarchy at {h.v1['cpuset']}"
    return Check("cpu placement", True, f"cpuset in {where}; CPUs {cpus}")


def _snapshot_check(layout: Layout) -> Check:
    """Informational: a snapshot pauses its guest for the copy of what the guest wrote, unless
    WARDEN_HOME's file system clones blocks (benchmarks/snapshot.py: ~1 ms on XFS whatever the
    guest wrote; on ext4 ~0.5 ms per MiB written, more on a busy host)."""
    where = next((p for p in (layout.machines, *layout.machines.parents) if p.is_dir()), None)
    if where is None:
        return Check("snapshots", True, f"{layout.machines}: not probed (no directory)")
    if hostfile.can_reflink(where):
        return Check("snapshots", True, f"{where} clones blocks: a snapshot pauses ~1 ms")
    return Check(
        "snapshots",
        True,
        f"{where} cannot clone blocks: a snapshot pauses its guest ~0.5 ms per MiB it wrote "
        "(XFS or btrfs make it ~1 ms)",
    )


def checks(layout: Layout) -> list[Check]:
    out: list[Check] = []
    try:
        k = kernel.resolve(layout)
        out.append(Check("kernel", True, f"{k.path} ({k.version()})"))
    except WardenError as e:
        out.append(Check("kernel", False, str(e)))
    try:
        shim = kernel.xstate_shim(layout)
        out.append(Check("xstate shim", True, f"{shim}; {_xstate_note(_cpu_flags())}"))
    except WardenError as e:
        out.append(Check("xstate shim", False, str(e)))
    try:
        h = cgroup.detect()
        kill_ok = True
        out.append(Check("cgroups", kill_ok, h.describe()))
        out.append(_cpuset_check(h))
    except WardenError as e:
        out.append(Check("cgroups", False, str(e)))
    out += _cpu_checks()
    for tool, pkg in (
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("busybox", "busybox-static"),
        ("debootstrap", "debootstrap"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("tcpdump", "tcpdump"),
        ("ssh", "openssh-client"),
        ("gcc", "gcc"),
    ):
        path = shutil.which(tool) or (f"/bin/{tool}" if os.path.exists(f"/bin/{tool}") else None)
        out.append(Check(tool, path is not None, path or f"missing: apt-get install {pkg}"))
    shm = os.statvfs("/dev/shm") if os.path.exists("/dev/shm") else None
    out.append(
        Check(
            "/dev/shm",
            shm is not None,
            f"{shm.f_bavail * shm.f_frsize >> 20} MiB free" if shm else "missing",
        )
    )
    out += _net_checks()
    try:
        from warden.images.store import ImageStore

        names = [i.name for i in ImageStore(layout).ls()]
        out.append(
            Check("images", True, ", ".join(names) or "none built: warden image build minimal")
        )
    except Exception as e:  # doctor reports; it never fails on a check's own error
        out.append(Check("images", False, str(e)))
    out.append(_snapshot_check(layout))
    built = sorted(p.name for p in layout.kernels.glob("*") if (p / "linux").exists())
    out.append(Check("kernels", True, ", ".join(["stock", *built])))
    return out


def run(layout: Layout, as_json: bool) -> int:
    res = checks(layout)
    if as_json:
        print(json.dumps([asdict(c) for c in res], indent=1))
    else:
        for c in res:
            print(f"{'ok ' if c.ok else 'BAD'} {c.name:<12} {c.detail}")
    return 0 if all(c.ok for c in res if c.name in ("kernel", "xstate shim", "cgroups")) else 1
