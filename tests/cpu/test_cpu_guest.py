"""Issue 19, real guests: each guest's kernel and the host processes that run its programs
(ptraced children of the kernel) are allowed exactly the CPU warden placed it on, and run
there; a pinned guest runs on its pin."""

from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import pids_of, run_on, wait_state
from tests.support.daemon import DaemonProc
from warden.host import cgroup, cpuset

pytestmark = pytest.mark.guest
CPUS = cpuset.host_cpus(cgroup.detect())


def status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{pid}: no {key}")


def last_cpu(pid: int) -> int:
    """The CPU the process last ran on (/proc/PID/stat field 39, after the comm)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[36])


@pytest.mark.skipif(len(CPUS) < 2, reason=f"needs two CPUs warden may use (this host: {CPUS})")
def test_a_guests_kernel_and_its_programs_share_the_placed_cpu(daemon: DaemonProc) -> None:
    pin = CPUS[-1]
    daemon.apply(FLEET_HEAD + machine_toml("c1") + machine_toml("c2") + machine_toml("p1", cpu=pin))
    infos = {n: wait_state(daemon, n, "running") for n in ("c1", "c2", "p1")}
    assert infos["p1"]["cpu"] == str(pin)
    # which CPU each unpinned guest gets depends on the host's other work (the policy counts
    # it; tests/cpu/test_placement.py and the driver test check the spread): one CPU each
    for name in ("c1", "c2"):
        assert infos[name]["cpu"] in {str(c) for c in CPUS}, infos[name]
    for name, info in infos.items():
        before = set(pids_of(daemon, name))
        # a guest program that keeps its CPU busy for a moment, so that it is on a CPU, and
        # one that sleeps: each is a host process of its own (one per guest address space)
        run_on(daemon, name, "sleep 1000 & (i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done)")
        after = set(pids_of(daemon, name))
        children = sorted(after - before)
        assert children, f"{name}: no new host process for the guest's programs"
        kernel = info["pid"]
        assert isinstance(kernel, int) and kernel in after
        for pid in [kernel, *children]:
            assert status(pid, "Cpus_allowed_list") == info["cpu"], (name, pid)
        # and they really ran there (the last CPU each was on)
        assert last_cpu(kernel) == int(info["cpu"]), name
        assert {last_cpu(p) for p in children} == {int(info["cpu"])}, name
        # every process of the guest, not only these
        assert {status(p, "Cpus_allowed_list") for p in after} == {info["cpu"]}, name
    daemon.cli("stop", "c1")
    assert daemon.ls()["c1"]["cpu"] is None
