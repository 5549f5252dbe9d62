"""`warden doctor`: what this host offers warden, checked, with what to do about each gap."""

import json
import os
import shutil
from dataclasses import asdict, dataclass

from warden.errors import WardenError
from warden.host import cgroup
from warden.paths import Layout
from warden.uml import kernel


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _xstate_note() -> str:
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line
                break
    if "amx_tile" in flags.split():
        return "AMX present: the stock kernel needs warden's xstate shim (loaded automatically)"
    return "no AMX: the xstate shim is loaded but not needed"


def checks(layout: Layout) -> list[Check]:
    out: list[Check] = []
    try:
        k = kernel.resolve(layout)
        out.append(Check("kernel", True, f"{k.path} ({k.version()})"))
    except WardenError as e:
        out.append(Check("kernel", False, str(e)))
    try:
        shim = kernel.xstate_shim(layout)
        out.append(Check("xstate shim", True, f"{shim}; {_xstate_note()}"))
    except WardenError as e:
        out.append(Check("xstate shim", False, str(e)))
    try:
        h = cgroup.detect()
        kill_ok = True
        out.append(Check("cgroups", kill_ok, h.describe()))
    except WardenError as e:
        out.append(Check("cgroups", False, str(e)))
    for tool, pkg in (
        ("mkfs.ext4", "e2fsprogs"),
        ("busybox", "busybox-static"),
        ("debootstrap", "debootstrap"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("ssh", "openssh-client"),
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
    return out


def run(layout: Layout, as_json: bool) -> int:
    res = checks(layout)
    if as_json:
        print(json.dumps([asdict(c) for c in res], indent=1))
    else:
        for c in res:
            print(f"{'ok ' if c.ok else 'BAD'} {c.name:<12} {c.detail}")
    return 0 if all(c.ok for c in res if c.name in ("kernel", "xstate shim", "cgroups")) else 1
