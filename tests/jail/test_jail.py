"""Issue 4, must-show: empty jails, cgroups and instant kill, with real guests."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc, instance_groups, run_on, wait_state
from warden.api.client import ApiClient
from warden.host import ns, uids

pytestmark = pytest.mark.guest


def audit(d: DaemonProc, name: str) -> dict[str, Any]:
    return json.loads(d.cli("jail", "audit", name, "--json").stdout)


def wait_empty(d: DaemonProc, name: str, timeout: float = 90) -> dict[str, Any]:
    """The audit once the jail of `name` has been emptied."""
    deadline = time.monotonic() + timeout
    while True:
        r = audit(d, name)
        if r["jail_state"] == "empty":
            return r
        assert r["jail_state"] not in ("error", "gone"), r
        assert time.monotonic() < deadline, f"jail of {name} still {r['jail_state']}"
        time.sleep(0.2)


def processes_of_uid(uid: int) -> list[int]:
    out = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                text = Path(f"/proc/{e.name}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^Uid:\s+(\d+)", text, re.M)
            if m and int(m.group(1)) == uid:
                out.append(int(e.name))
    return out


def hostfs_listing(d: DaemonProc, name: str) -> str:
    return run_on(d, name, "mkdir -p /mnt; mount -t hostfs none /mnt && ls -A /mnt; umount /mnt")


def test_hostfs_shows_an_empty_jail_and_the_host_without_one(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("jailed") + machine_toml("open", jail=False))
    wait_state(daemon, "jailed", "running")
    wait_state(daemon, "open", "running")
    wait_empty(daemon, "jailed")
    assert hostfs_listing(daemon, "jailed") == ""
    # The same probe in a guest without a jail lists the host's root, and reads its files.
    listing = hostfs_listing(daemon, "open").split()
    assert {"etc", "usr", "proc", "tmp"} <= set(listing), listing
    host_name = Path("/etc/hostname").read_text().strip()
    got = run_on(daemon, "open", "mount -t hostfs none /mnt && cat /mnt/etc/hostname; umount /mnt")
    assert got.strip() == host_name
    # A root inside the jailed guest cannot climb out of it by naming a path either.
    out = run_on(
        daemon, "jailed", "mount -t hostfs none /mnt -o /etc 2>&1; ls -A /mnt; umount /mnt"
    )
    assert "hostname" not in out and "passwd" not in out


def test_audit_of_a_booted_guest(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("aud"))
    info = wait_state(daemon, "aud", "running")
    r = wait_empty(daemon, "aud")
    s = r["summary"]
    assert s["capabilities"] == 0
    assert s["no_new_privs"] is True
    assert s["seccomp"] == ["filter"]
    assert all(p["seccomp_filters"] == 1 for p in r["processes"])
    uid = r["uid"]
    assert 200000 <= uid < 200000 + 65536 and s["uids"] == [uid]
    assert all(p["gid"] == [uid] * 4 and p["groups"] == [] for p in r["processes"])
    assert {"mnt", "pid", "net", "ipc", "uts", "cgroup"} <= set(s["separate_namespaces"])
    # Nothing under the root; the ctl directory is only the kernel's working directory.
    assert r["root"]["entries"] == [] and s["files_under_root"] == 0
    # (reply-intr: the socket the kernel's interrupt-time mconsole requests answer on, memory)
    assert sorted(r["cwd"]["entries"]) == ["aud", "aud/mconsole", "notify", "reply", "reply-intr"]
    assert r["mounts"] == [r["mounts"][0]] and r["mounts"][0].startswith("/ (tmpfs")
    # Every fd of every process is one the kernel was given or made itself.
    home = str(daemon.layout.home)
    kernel = next(p for p in r["processes"] if p["pid"] == info["pid"])
    for p in r["processes"]:
        for fd in p["fds"]:
            target, host = fd["target"], fd.get("host_file", "")
            ok = (
                target.startswith(("socket:", "anon_inode:", "pipe:"))
                # UML's memory file (O_TMPFILE) on its own tmpfs, detached from the jail's root
                or re.fullmatch(r"/#\d+ \(deleted\)", target) is not None
                or target.startswith(f"{home}/machines/aud/")
                or host.startswith(f"{home}/")
                or host in ("/dev/null", "/dev/random")
            )
            assert ok, f"unexpected fd {fd} in {p['pid']}"
    hosts = {fd.get("host_file", fd["target"]) for fd in kernel["fds"]}
    files = daemon.layout.machine("aud")
    assert {str(files / "disk.cow"), str(files / "lines/con0.in"), "/dev/null"} <= hosts
    assert str(files / "seed.img") not in hosts  # the guest read its seed and let it go
    limits = Path(f"/proc/{info['pid']}/limits").read_text()
    assert re.search(r"Max core file size\s+0\s+0", limits)
    assert re.search(r"Max open files\s+1024\s+1024", limits)
    # The human form says the same.
    text = daemon.cli("jail", "audit", "aud").stdout
    assert "capabilities 0" in text and "0 entries under the kernel's root" in text


def test_jailed_guest_is_limited_by_its_cgroup(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("lim", memory="96M"))
    wait_state(daemon, "lim", "running")
    limits = audit(daemon, "lim")["cgroup"]["limits"]
    mem = limits.get("memory.limit_in_bytes", limits.get("memory.max"))
    assert int(mem) == (96 << 20) + (32 << 20) + (16 << 20)
    assert limits["pids.max"] == "1024"
    assert limits.get("cpu.shares", limits.get("cpu.weight")) in ("1024", "100")


def _memory_files(d: DaemonProc, name: str) -> tuple[int, int, int]:
    """(limit, peak, OOM kills) of the guest's memory cgroup, v1 or v2."""
    v1 = Path(f"/sys/fs/cgroup/memory/warden-{d.layout.instance}/{name}")
    if v1.exists():
        limit = int((v1 / "memory.limit_in_bytes").read_text())
        peak = int((v1 / "memory.max_usage_in_bytes").read_text())
        oom = re.search(r"oom_kill (\d+)", (v1 / "memory.oom_control").read_text())
        return limit, peak, int(oom.group(1)) if oom else 0
    v2 = Path(f"/sys/fs/cgroup/warden-{d.layout.instance}/{name}")
    events = (v2 / "memory.events").read_text()
    oom = re.search(r"oom_kill (\d+)", events)
    return (
        int((v2 / "memory.max").read_text()),
        int((v2 / "memory.peak").read_text()),
        (int(oom.group(1)) if oom else 0),
    )


def test_a_guest_using_all_its_memory_fits_its_limit(daemon: DaemonProc) -> None:
    """The limit is the guest's memory plus the overhead measured for it: a guest that fills its
    RAM, runs 40 processes and writes to its disk is never OOM-killed by its cgroup."""
    daemon.apply(FLEET_HEAD + machine_toml("full", memory="128M"))
    pid = wait_state(daemon, "full", "running")["pid"]
    avail = int(run_on(daemon, "full", "awk '/MemAvailable/ {print $2}' /proc/meminfo"))
    fill = avail * 85 // 100 // 1024
    run_on(
        daemon,
        "full",
        "mount -o remount,size=100% /tmp; for i in $(seq 40); do sleep 600 & done; "
        f"dd if=/dev/zero of=/tmp/fill bs=1M count={fill} 2>&1 | tail -1; "
        "dd if=/dev/zero of=/root/big bs=1M count=48 2>&1 | tail -1; sync",
        timeout=60,
    )
    # Discard goes to the host as fallocate(PUNCH_HOLE), which the seccomp filter allows.
    trimmed = run_on(daemon, "full", "rm /root/big; sync; fstrim -v /", timeout=30)
    assert "bytes trimmed" in trimmed, trimmed
    limit, peak, oom_kills = _memory_files(daemon, "full")
    assert oom_kills == 0 and peak <= limit
    assert peak > fill << 20  # the fill really landed in host memory charged to the guest
    assert daemon.ls()["full"]["pid"] == pid
    assert run_on(daemon, "full", "echo still-here").strip() == "still-here"


def test_pause_freezes_and_resume_thaws(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("frz"))
    info = wait_state(daemon, "frz", "running")
    run_on(daemon, "frz", "(while :; do :; done) & true")
    group = Path(f"/sys/fs/cgroup/unified/warden-{daemon.layout.instance}/frz")

    def cpu_ticks() -> int:
        total = 0
        for pid in (group / "cgroup.procs").read_text().split():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total

    daemon.cli("pause", "frz")
    assert daemon.ls()["frz"]["state"] == "paused"
    deadline = time.monotonic() + 10
    while "frozen 1" not in (group / "cgroup.events").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = cpu_ticks()
    time.sleep(1.0)
    assert cpu_ticks() == before  # a busy loop made no progress while frozen
    daemon.cli("resume", "frz")
    assert "frozen 0" in (group / "cgroup.events").read_text()
    time.sleep(1.0)
    assert cpu_ticks() > before
    assert run_on(daemon, "frz", "echo alive").strip() == "alive"
    assert daemon.ls()["frz"]["pid"] == info["pid"]


def test_reboot_inside_the_jail_comes_back_jailed(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("rb"))
    first = wait_state(daemon, "rb", "running")["pid"]
    wait_empty(daemon, "rb")
    daemon.console("rb", "reboot\n", timeout=1.0)
    deadline = time.monotonic() + 60
    while True:
        info = daemon.ls()["rb"]
        if info["state"] == "running" and info["pid"] != first:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    kinds = [e["kind"] for e in json.loads(daemon.cli("events", "rb", "--json").stdout)]
    assert "rebooting" in kinds
    r = wait_empty(daemon, "rb")
    assert r["summary"]["capabilities"] == 0 and r["root"]["entries"] == []
    assert hostfs_listing(daemon, "rb") == ""
    assert run_on(daemon, "rb", "hostname").strip() == "rb"


def test_jail_emptied_after_the_daemon_restarts(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("re"))
    wait_state(daemon, "re", "running")
    daemon.kill9()  # most likely before the jail was emptied: nobody is left to do it
    daemon.start()
    r = wait_empty(daemon, "re")
    assert r["root"]["entries"] == []
    assert "jail-emptied" in [
        e["kind"] for e in json.loads(daemon.cli("events", "re", "--json").stdout)
    ]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_hundred_start_kill_cycles_leave_nothing(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("cyc", autostart=False))
    api = ApiClient(daemon.layout)
    uid = None
    group = Path(f"/sys/fs/cgroup/unified/warden-{daemon.layout.instance}/cyc")
    for i in range(100):
        info = api.post("/machines/cyc/start", {"wait": True})
        assert info["state"] == "running", (i, info)
        uid = uid or audit(daemon, "cyc")["uid"]
        api.post("/machines/cyc/kill", {"wait": True})
        assert not group.exists(), i
    assert processes_of_uid(uid) == []
    assert [g.name for d in instance_groups(daemon.layout) for g in d.iterdir() if g.is_dir()] == []
    # No jail mount reached the host's namespace.
    assert str(daemon.layout.home) not in Path("/proc/self/mountinfo").read_text()
    # The guest still exists: it keeps its uid, and its mconsole still answers after kills.
    assert uids.owner(daemon.layout, uid) == {"home": str(daemon.layout.home), "machine": "cyc"}
    daemon.cli("start", "cyc")
    assert daemon.cli("mconsole", "cyc", "version").stdout.startswith("Linux ")


# ---- bad input -------------------------------------------------------------------------------
def test_uid_range_exhausted(daemon: DaemonProc) -> None:
    base = 1_970_000_000 + os.getpid() % 1000 * 10
    head = FLEET_HEAD + f"[host]\nuid_base = {base}\nuid_count = 1\n"
    daemon.apply(head + machine_toml("u1"))
    wait_state(daemon, "u1", "running")
    daemon.apply(head + machine_toml("u1") + machine_toml("u2"))
    info = wait_state(daemon, "u2", "crashed")
    err = info["last_exit"]["error"]
    assert f"uid_base = {base}" in err and "uid_count = 1" in err and "'u2'" in err
    assert "u1" in err  # who holds the only uid
    group = Path(f"/sys/fs/cgroup/unified/warden-{daemon.layout.instance}/u2")
    assert not group.exists()
    assert audit(daemon, "u1")["uid"] == base
    assert uids.owner(daemon.layout, base)["machine"] == "u1"  # type: ignore[index]


@pytest.fixture
def noexec_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="wnx-", dir="/tmp"))
    ns.mount("tmpfs", str(d), "tmpfs", ns.MS_NOEXEC | ns.MS_NOSUID | ns.MS_NODEV, "size=64m")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)


def _my_claims(d: DaemonProc) -> list[Path]:
    claims = uids.claims_dir(d.layout)
    home = json.dumps(str(d.layout.home))
    return [p for p in claims.iterdir() if p.name.isdigit() and home in p.read_text()]


def test_kernel_on_a_noexec_filesystem_is_refused(daemon: DaemonProc, noexec_dir: Path) -> None:
    kernel = noexec_dir / "linux"
    shutil.copy2("/usr/bin/linux.uml", kernel)
    daemon.apply(FLEET_HEAD + machine_toml("nx", kernel=str(kernel)))
    info = wait_state(daemon, "nx", "crashed")
    err = info["last_exit"]["error"]
    assert str(kernel) in err and "noexec" in err
    assert not Path(f"/sys/fs/cgroup/unified/warden-{daemon.layout.instance}/nx").exists()
    assert _my_claims(daemon) == []  # no uid was handed out either


def test_shim_in_a_noexec_cache_is_refused(
    home: Any, minimal_image: Path, noexec_dir: Path
) -> None:
    """WARDEN_CACHE (where the xstate shim is built) on a noexec filesystem: the jail would
    bind-mount a library the loader cannot map; refused before anything starts."""
    d = DaemonProc(home, env={"WARDEN_CACHE": str(noexec_dir)}).start()
    try:
        d.apply(FLEET_HEAD + machine_toml("sx", image=str(minimal_image)))
        err = wait_state(d, "sx", "crashed")["last_exit"]["error"]
        assert "xstate_shim.so" in err and "mounted noexec" in err and str(noexec_dir) in err
        assert not Path(f"/sys/fs/cgroup/unified/warden-{home.instance}/sx").exists()
        assert _my_claims(d) == []
    finally:
        d.close()
        d.assert_clean()


def test_home_on_a_noexec_filesystem_still_boots_jailed(
    minimal_image: Path, noexec_dir: Path
) -> None:
    """The jail's root (where UML's memory file lives) is a tmpfs of its own, mounted with exec
    allowed, so a WARDEN_HOME on a noexec filesystem is no problem for a jailed guest."""
    from warden.paths import layout

    lay = layout(noexec_dir / "home")
    d = DaemonProc(lay).start()
    try:
        d.apply(FLEET_HEAD + machine_toml("nh", image=str(minimal_image)))
        wait_state(d, "nh", "running")
        wait_empty(d, "nh")
        assert run_on(d, "nh", "hostname").strip() == "nh"
    finally:
        d.close()
        d.assert_clean()


def test_image_link_leading_out_is_refused(daemon: DaemonProc, minimal_image: Path) -> None:
    elsewhere = daemon.layout.home / "elsewhere"
    elsewhere.mkdir()
    out_link = elsewhere / "guest.img"
    out_link.symlink_to(minimal_image)
    r = daemon.cli(
        "apply", str(_fleet(daemon, FLEET_HEAD + machine_toml("ln", image=str(out_link)))),
        check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert str(out_link) in r.stderr and str(minimal_image) in r.stderr
    assert "ln" not in daemon.ls()
    assert not daemon.layout.machine("ln").exists()
    # A link to a file in its own directory (like images/NAME.img) is fine.
    near = minimal_image.parent / f".test-link-{os.getpid()}.img"
    near.symlink_to(minimal_image.name)
    try:
        daemon.apply(FLEET_HEAD + machine_toml("ok", image=str(near)))
        wait_state(daemon, "ok", "running")
    finally:
        near.unlink()


def _fleet(d: DaemonProc, text: str) -> Path:
    path = d.layout.home / "fleet.toml"
    path.write_text(text)
    return path


def test_no_usable_cgroup_hierarchy(home: Any, minimal_image: Path) -> None:
    empty = Path(tempfile.mkdtemp(prefix="wcg-", dir="/tmp"))
    try:
        d = DaemonProc(home, env={"WARDEN_CGROUP_ROOT": str(empty)})
        with pytest.raises(RuntimeError) as e:
            d.start()
        assert "no cgroup v2 hierarchy is mounted under" in str(e.value)
        assert str(empty) in str(e.value)
        assert instance_groups(home) == []
        r = subprocess.run(
            [sys.executable, "-m", "warden", "doctor"],
            env={**os.environ, "WARDEN_HOME": str(home.home), "WARDEN_CGROUP_ROOT": str(empty)},
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1 and "BAD cgroups" in r.stdout
    finally:
        d.stop()
        shutil.rmtree(empty, ignore_errors=True)
