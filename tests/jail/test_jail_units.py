"""Issue 4, the parts of jails that need no guest: plans, limits, uid claims, checks."""

import os
import socket
from pathlib import Path

import pytest

from warden.host import cgroup, jail, uids
from warden.jail import limits as jail_limits
from warden.paths import Layout
from warden.uml import mconsole


def test_plan_survives_the_trip_through_json() -> None:
    plan = jail.JailPlan(
        name="g",
        uid=200001,
        gid=200001,
        mount_point="/x/jail",
        root_size=1 << 27,
        binds=[jail.Bind("/a", "/b", kind=jail.DIR, writable=True, until=jail.AT_DISKS)],
        cwd="/b",
    )
    import json

    back = jail.JailPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan
    assert isinstance(back.binds[0], jail.Bind)


def test_limits_in_each_layout() -> None:
    lim = cgroup.Limits(memory=200 << 20, pids=1024, cpu_weight=100)
    v2 = cgroup.Hierarchy("v2", Path("/sys/fs/cgroup"))
    hybrid = cgroup.Hierarchy("hybrid", Path("/sys/fs/cgroup/unified"))
    assert lim.files(v2) == [
        ("memory", "memory.max", str(200 << 20)),
        ("pids", "pids.max", "1024"),
        ("cpu", "cpu.weight", "100"),
    ]
    assert lim.files(hybrid) == [
        ("memory", "memory.limit_in_bytes", str(200 << 20)),
        ("pids", "pids.max", "1024"),
        ("cpu", "cpu.shares", "1024"),
    ]


def test_limits_written_where_each_controller_lives(tmp_path: Path) -> None:
    """Hybrid: limits go to the v1 trees, kill/freeze stay on the v2 one; a controller that is
    not mounted is reported, not invented."""
    unified, memory, pids = tmp_path / "unified", tmp_path / "memory", tmp_path / "pids"
    h = cgroup.Hierarchy("hybrid", unified, {"memory": memory, "pids": pids})
    g = cgroup.Cgroup(h, "inst", "g1")
    g.create()
    for d, name in ((memory, "memory.limit_in_bytes"), (pids, "pids.max")):
        (d / "warden-inst" / "g1" / name).write_text("max\n")
    missing = g.set_limits(cgroup.Limits(memory=123 << 20, pids=77, cpu_weight=100))
    assert missing == ["cpu"]
    assert (memory / "warden-inst/g1/memory.limit_in_bytes").read_text() == str(123 << 20)
    assert (pids / "warden-inst/g1/pids.max").read_text() == "77"
    assert not (unified / "warden-inst/g1/memory.limit_in_bytes").exists()
    v2 = cgroup.Cgroup(cgroup.Hierarchy("v2", tmp_path / "v2"), "inst", "g2")
    v2.path.mkdir(parents=True)
    for name in ("memory.max", "pids.max", "cpu.weight"):
        (v2.path / name).write_text("max\n")
    assert v2.set_limits(cgroup.Limits(memory=5 << 20, pids=9, cpu_weight=300)) == []
    assert v2.limits() == {"memory.max": str(5 << 20), "pids.max": "9", "cpu.weight": "300"}


def test_memory_limit_covers_the_guest_and_its_overhead() -> None:
    small = jail_limits.limits_for(64 << 20)
    big = jail_limits.limits_for(4 << 30)
    assert small.memory == (64 << 20) + jail_limits.MEMORY_OVERHEAD + (16 << 20)
    assert big.memory == (4 << 30) + jail_limits.MEMORY_OVERHEAD + 4 * (16 << 20)
    assert small.pids == jail_limits.PIDS_MAX


def test_image_link_rule(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real = tmp_path / "a" / "disk-1.img"
    real.write_bytes(b"x")
    near = tmp_path / "a" / "disk.img"
    near.symlink_to("disk-1.img")
    jail_limits.check_image_link(near, "image")  # same directory: like images/NAME.img
    jail_limits.check_image_link(real, "image")
    far = tmp_path / "b" / "disk.img"
    far.symlink_to(real)
    with pytest.raises(jail_limits.JailError) as e:
        jail_limits.check_image_link(far, "machine 'g': image")
    msg = str(e.value)
    assert str(far) in msg and str(real) in msg and "give the real path" in msg


def test_bind_sources_are_checked(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    link = tmp_path / "l"
    link.symlink_to(f)
    jail.check_source(jail.Bind(str(f), "/f"))
    with pytest.raises(jail.JailSetupError, match="symbolic link"):
        jail.check_source(jail.Bind(str(link), "/f"))
    with pytest.raises(jail.JailSetupError, match="is not a dir"):
        jail.check_source(jail.Bind(str(f), "/f", kind=jail.DIR))
    with pytest.raises(jail.JailSetupError, match="No such file"):
        jail.check_source(jail.Bind(str(tmp_path / "nope"), "/f"))
    jail.check_source(jail.Bind("/dev/null", "/dev/null", kind=jail.DEV))


def test_kernel_needs_its_loader_and_libc() -> None:
    objs = jail_limits.shared_objects(Path("/usr/bin/linux.uml"))
    assert any(o.endswith("/libc.so.6") for o in objs)
    assert any("ld-linux" in o for o in objs)


def _layout(tmp_path: Path, name: str) -> Layout:
    lay = Layout(home=tmp_path / name, cache=tmp_path / "cache")
    (lay.home / "machines").mkdir(parents=True)
    return lay


def _machine(lay: Layout, name: str) -> None:
    (lay.machines / name).mkdir()


def test_uids_unique_across_homes_and_released_by_destroy(tmp_path: Path) -> None:
    base = 3_900_000_000 // 2  # far above any uid this host uses
    h1, h2 = _layout(tmp_path, "h1"), _layout(tmp_path, "h2")
    for lay, name in ((h1, "a"), (h1, "b"), (h2, "a")):
        _machine(lay, name)
    a1 = uids.allocate(h1, "a", base, 3, None)
    b1 = uids.allocate(h1, "b", base, 3, None)
    a2 = uids.allocate(h2, "a", base, 3, None)
    assert [a1, b1, a2] == [base, base + 1, base + 2]
    assert uids.allocate(h1, "a", base, 3, a1) == a1  # a guest keeps its uid
    _machine(h2, "c")
    with pytest.raises(uids.UidsExhausted) as e:
        uids.allocate(h2, "c", base, 3, None)
    msg = str(e.value)
    assert "uid_base = 1950000000" in msg and "uid_count = 3" in msg and "'c'" in msg
    assert "warden destroy" in msg
    (h1.machines / "b").rmdir()  # `warden destroy b`
    assert uids.allocate(h2, "c", base, 3, None) == b1
    assert uids.owner(h2, b1) == {"home": str(h2.home), "machine": "c"}


def test_uids_never_shared_with_a_running_process_or_a_user(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "h")
    _machine(lay, "g")
    # uid 0: in /etc/passwd and running; the allocator must refuse it whatever the claims say.
    with pytest.raises(uids.UidsExhausted):
        uids.allocate(lay, "g", 0, 1, None)
    assert os.getuid() in uids.uids_in_use_by_processes()


def test_moving_to_a_new_range_releases_the_old_claim(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "h")
    _machine(lay, "g")
    base = 1_960_000_000
    old = uids.allocate(lay, "g", base, 2, None)
    new = uids.allocate(lay, "g", base + 10, 2, old)
    assert new == base + 10
    assert uids.owner(lay, old) is None


def test_reply_socket_is_bound_by_a_relative_name(tmp_path: Path) -> None:
    """What lets a jailed kernel answer: UML replies to the address the request came from."""
    cwd = os.getcwd()
    path = tmp_path / "reply"
    sock = mconsole._bind(path, relative=True)
    try:
        assert sock.getsockname() == "reply"
        assert os.getcwd() == cwd  # the caller's working directory never changed
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(b"hello", str(path))
        assert sock.recv(16) == b"hello"
        sender.close()
    finally:
        sock.close()


def test_closing_an_mconsole_client_mid_request_spares_the_next_socket(tmp_path: Path) -> None:
    """The emptier polls a booting guest's mconsole; a kill closes the client while a request
    waits. The fd number is then reused (by an API connection, say): the late end of the old
    request must not unregister the new socket's reader."""
    import asyncio

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        target = tmp_path / "mconsole"
        guest = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        guest.bind(str(target))  # a guest that never answers
        client = mconsole.AsyncClient(target, tmp_path / "reply", timeout=0.3)
        pending = asyncio.ensure_future(client.request("version"))  # noqa: TID251 - test only
        await asyncio.sleep(0.05)
        fd = client._sock.fileno()
        client.close()
        a, b = socket.socketpair()
        while a.fileno() != fd:  # take the freed number, as a new connection would
            a.close()
            a, b = socket.socketpair()
        got = asyncio.Event()
        loop.add_reader(a.fileno(), got.set)
        with pytest.raises(mconsole.MconsoleError):
            await pending
        b.send(b"x")
        try:
            await asyncio.wait_for(got.wait(), 2)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(a.fileno())
            a.close()
            b.close()
            guest.close()
        return True

    assert asyncio.run(scenario())


SECCOMP_PROBE = r"""
import ctypes, errno, os, socket, sys
from warden.host import jail, ns, seccomp
libc = ctypes.CDLL(None, use_errno=True)

def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()

ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)
jail.load_seccomp(seccomp.compile_filter().hex())
out = {
    "unshare_user": call(272, ns.CLONE_NEWUSER),
    "io_uring_setup": call(425, 1, 0),
    "bpf": call(321, 0, 0, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "clone_newuser": call(56, ns.CLONE_NEWUSER | 17, 0, 0, 0, 0),
    "clone3": call(435, 0, 0),
    "x32_getpid": call(0x40000000 | 39),
    "getpid": call(39),
}
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out["inet"] = 0
except OSError as e:
    out["inet"] = e.errno
socket.socketpair(socket.AF_UNIX).__class__  # AF_UNIX is allowed
out["unix"] = 0
with open(os.devnull, "w") as f:  # openat, write, close: allowed
    f.write("x")
print(out)
"""


def test_seccomp_filter_refuses_what_uml_never_needs() -> None:
    """The very filter jailed kernels get (compile_filter + jail.load_seccomp), on a probe
    process: what UML measured to need works, the rest is refused."""
    import ast
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", SECCOMP_PROBE], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    import errno as e

    assert out == {
        "unshare_user": e.ENOSYS,
        "io_uring_setup": e.ENOSYS,
        "bpf": e.ENOSYS,
        "mount": e.ENOSYS,
        "clone_newuser": e.EPERM,
        "clone3": e.ENOSYS,
        "x32_getpid": e.ENOSYS,
        "getpid": 0,
        "inet": e.EAFNOSUPPORT,
        "unix": 0,
    }


def test_seccomp_program_shape() -> None:
    from warden.host import seccomp

    prog = seccomp.compile_filter()
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096
    allowed = seccomp.allowed()
    for name in ("ptrace", "wait4", "mmap", "epoll_wait", "execve", "exit_group", "fallocate"):
        assert name in allowed
    for name in ("mount", "unshare", "setns", "io_uring_setup", "bpf", "keyctl", "init_module"):
        assert name not in allowed
