"""Where a guest's cpuset lives in each cgroup layout, read from a fake cgroup tree (files in a
temporary directory): the v2 tree, a hybrid host with a v1 cpuset, and a host with none."""

import os
from pathlib import Path

from warden import doctor
from warden.host import cgroup, cpuset


def tree(tmp_path: Path, v2_controllers: str, v1_cpuset: bool) -> cgroup.Hierarchy:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text(v2_controllers + "\n")
    (unified / "cpuset.cpus.effective").write_text("0-3\n")
    v1 = {}
    if v1_cpuset:
        v1["cpuset"] = tmp_path / "cpuset"
        v1["cpuset"].mkdir()
        (v1["cpuset"] / "cpuset.effective_cpus").write_text("0-1\n")
    mode = "v2" if not v1 else "hybrid"
    return cgroup.Hierarchy(mode=mode, unified=unified, v1=v1)


def test_pure_v2_puts_the_cpuset_in_the_guests_own_group(tmp_path: Path) -> None:
    h = tree(tmp_path, "cpuset cpu memory pids", v1_cpuset=False)
    assert cpuset.available(h) and cpuset.host_cpus(h) == (0, 1, 2, 3)
    cg = cgroup.Cgroup(h, "abc", "g1")
    cg.path.mkdir(parents=True)
    cpuset.set_cpus(cg, (2,))
    assert (cg.path / "cpuset.cpus").read_text() == "2"
    assert cpuset.cpus_of(cg) == (2,)
    check = doctor._cpuset_check(h)
    assert check.ok and "v2 tree" in check.detail and "CPUs 0-3" in check.detail


def test_hybrid_puts_it_in_the_v1_hierarchy(tmp_path: Path) -> None:
    h = tree(tmp_path, "hugetlb", v1_cpuset=True)
    assert cpuset.available(h) and cpuset.host_cpus(h) == (0, 1)
    cg = cgroup.Cgroup(h, "abc", "g1")
    v1dir = tmp_path / "cpuset" / "warden-abc" / "g1"
    v1dir.mkdir(parents=True)
    cpuset.set_cpus(cg, (0, 1))
    assert (v1dir / "cpuset.cpus").read_text() == "0-1"
    assert v1dir / "cgroup.procs" in cg.procs_files()  # its processes join it at exec
    assert "v1 hierarchy" in doctor._cpuset_check(h).detail


def test_no_cpuset_controller_is_said_plainly(tmp_path: Path) -> None:
    h = tree(tmp_path, "hugetlb", v1_cpuset=False)
    h = cgroup.Hierarchy(mode="hybrid", unified=h.unified, v1={})
    assert not cpuset.available(h)
    assert cpuset.host_cpus(h) == tuple(sorted(os.sched_getaffinity(0)))
    check = doctor._cpuset_check(h)
    assert not check.ok and "no cpuset controller" in check.detail
    assert cpuset.cpus_of(cgroup.Cgroup(h, "abc", "g1")) is None
