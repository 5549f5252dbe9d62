"""The launch zygote (warden.host.zygote): fds reach the launched program at the numbers its
command line names, whatever numbers they had in the daemon, and the zygote goes with its
daemon. Real processes: a zygote forks a launcher that execs /bin/sh."""

import os
import time
from pathlib import Path

from warden.host.launch import LaunchPlan
from warden.host.zygote import Zygote


def launched(z: Zygote, plan: LaunchPlan, fds: list[int]) -> dict[str, object]:
    import json

    r, w = os.pipe2(os.O_CLOEXEC)
    z.spawn(plan, fds, w)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        return dict(json.loads(f.read().decode().splitlines()[0]))


def test_placing_fds_whose_numbers_collide(tmp_path: Path) -> None:
    """The zygote receives fds at its lowest free numbers, which can be numbers the launched
    program wants other fds at. In a forked child (as the zygote's): received fds at 50..53,
    wanted swapped in pairs; a naive dup2 would clobber a file not yet moved."""
    from warden.host.zygote import _place

    files = [tmp_path / f"f{i}" for i in range(5)]
    for f in files:
        f.touch()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            for i, f in enumerate(files):
                fd = os.open(f, os.O_RDONLY)
                os.dup2(fd, 50 + i)
                os.close(fd)
            status = _place([50, 51, 52, 53, 54], [51, 50, 53, 52])
            want = {51: 0, 50: 1, 53: 2, 52: 3, status: 4}
            ok = status > 53 and all(
                os.fstat(fd).st_ino == files[i].stat().st_ino for fd, i in want.items()
            )
            ok = ok and os.get_inheritable(51) and not os.get_inheritable(status)
        finally:
            os._exit(0 if ok else 1)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0


def test_a_launch_through_the_zygote_gets_its_fds_and_nothing_else(tmp_path: Path) -> None:
    files = [tmp_path / f"f{i}" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text(f"file {i}\n")
    held = [os.open(f, os.O_RDONLY | os.O_CLOEXEC) for f in files]
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    script = "; ".join(f"cat /dev/fd/{t}" for t in held) + "; ls /proc/self/fd | wc -l"
    plan = LaunchPlan(
        argv=["/bin/sh", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        keep_fds=held,
        log_fd=log,
        cgroup_procs=[],
    )
    z = Zygote()
    z.start()
    try:
        status = launched(z, plan, [*held, log])
    finally:
        z.stop()
        for fd in [*held, log]:
            os.close(fd)
    assert isinstance(status.get("pid"), int), status
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline:
        out = (tmp_path / "log").read_text()
        if out.count("\n") >= 4:
            break
        time.sleep(0.05)
    lines = out.splitlines()
    assert lines[:3] == [f"file {i}" for i in range(3)], out
    # stdin, stdout, stderr, the 3 kept fds and the one ls reads: nothing else leaked in.
    assert int(lines[3]) == 3 + 3 + 1, out


def test_the_zygote_ends_with_its_socket_and_reports_bad_plans(tmp_path: Path) -> None:
    z = Zygote()
    z.start()
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    plan = LaunchPlan(
        argv=["/nonexistent/kernel"],
        env={},
        keep_fds=[],
        log_fd=log,
        cgroup_procs=[str(tmp_path / "no-such-cgroup" / "cgroup.procs")],
    )
    status = launched(z, plan, [log])
    assert "no-such-cgroup" in str(status.get("error")), status
    assert z.alive()
    proc = z.proc
    assert proc is not None
    z.stop()
    assert proc.returncode == 0 and not z.alive()
    os.close(log)
