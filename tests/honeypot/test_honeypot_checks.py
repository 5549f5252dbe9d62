"""Honeypot settings refused before any boot, the channels' survival trick, the state file and
the fleet's per-machine login keys. No guest boots here (one test applies fleets to a real
daemon, which refuses them)."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from warden.errors import SpecError
from warden.honeypot import channels as ch
from warden.honeypot.checks import check_machine, profile_ref
from warden.paths import Layout
from warden.spec import fleet

BAD_PROFILE = '[profile]\ntimeout_ms = 100\n[proc.cpuinfo]\nreplace = "x"\ncolour = "red"\n'


def fake_kernel(path: Path, params: bytes) -> Path:
    """An executable file that names the given boot parameters, as a kernel binary would."""
    path.write_bytes(b"\x7fELF" + b"\0" * 5000 + params + b"\0" * 5000)
    path.chmod(0o755)
    return path


def parse(text: str, source: str) -> fleet.Fleet:
    return fleet.parse(FLEET_HEAD + text, source)


def test_settings_that_cannot_work_are_refused_with_the_machine_and_what_to_do(
    home: Layout, tmp_path: Path
) -> None:
    src = str(tmp_path / "f.toml")
    k = fake_kernel(tmp_path / "linux", b"tty_log_fd=\0disguise_fd=")
    f = parse(machine_toml("pot", kernel=str(k), tty_log=True, jail=False), src)
    with pytest.raises(SpecError, match=rf"{src}: machine 'pot': tty_log need jail = true"):
        check_machine(f.machines[0], f, home)
    f = parse("[logs]\nenabled = false\n" + machine_toml("pot", kernel=str(k), tty_log=True), src)
    with pytest.raises(SpecError, match=r"\[logs\] enabled = false.*tty_log = false"):
        check_machine(f.machines[0], f, home)
    f = parse(machine_toml("pot", kernel="honeypot", disguise="baremetal"), src)
    with pytest.raises(SpecError, match=r"kernel = 'honeypot': .*warden kernel build honeypot"):
        check_machine(f.machines[0], f, home)  # this home has no kernels built
    f = parse(machine_toml("pot", kernel="/usr/bin/linux.uml", tty_log=True), src)
    with pytest.raises(SpecError, match=r"/usr/bin/linux.uml .*has no tty_log_fd= parameter"):
        check_machine(f.machines[0], f, home)  # Debian's stock kernel, given by path
    only_tty = fake_kernel(tmp_path / "tty-only", b"tty_log_fd=")
    f = parse(machine_toml("pot", kernel=str(only_tty), tty_log=True, disguise="baremetal"), src)
    with pytest.raises(SpecError, match=r"disguise = \.\.\. needs .* no disguise_fd= parameter"):
        check_machine(f.machines[0], f, home)
    f = parse(machine_toml("pot", kernel=str(only_tty), tty_log=True), src)
    assert check_machine(f.machines[0], f, home) is None


def test_profiles_are_loaded_whole_and_relative_paths_follow_the_fleet_file(
    home: Layout, tmp_path: Path
) -> None:
    k = fake_kernel(tmp_path / "linux", b"tty_log_fd=\0disguise_fd=")
    (tmp_path / "pots").mkdir()
    (tmp_path / "pots" / "bad.toml").write_text(BAD_PROFILE)
    (tmp_path / "pots" / "good.toml").write_text("[proc.exitcode]\nhide = true\n")
    src = str(tmp_path / "fleet.toml")
    f = parse(machine_toml("pot", kernel=str(k), disguise="pots/bad.toml"), src)
    with pytest.raises(SpecError) as e:
        check_machine(f.machines[0], f, home)
    msg = str(e.value)
    assert msg.startswith(f"{src}: machine 'pot': disguise = 'pots/bad.toml': ")
    assert f"{tmp_path}/pots/bad.toml: proc.cpuinfo: unknown key 'colour'" in msg
    f = parse(machine_toml("pot", kernel=str(k), disguise="pots/good.toml"), src)
    assert profile_ref(f.machines[0], f) == str(tmp_path / "pots" / "good.toml")
    profile = check_machine(f.machines[0], f, home)
    assert profile is not None and [r.path for r in profile.proc] == ["exitcode"]
    f = parse(machine_toml("pot", kernel=str(k), disguise="no-such-profile"), src)
    with pytest.raises(
        SpecError, match="no disguise profile named 'no-such-profile'; warden ships"
    ):
        check_machine(f.machines[0], f, home)


def test_the_daemon_refuses_such_a_fleet_and_changes_nothing(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_PROFILE)
    path = daemon.layout.home / "fleet.toml"
    for keys, expect in (
        ({"disguise": "baremetal"}, "kernel = 'honeypot': kernel 'honeypot' is not built"),
        ({"tty_log": True}, "warden kernel build honeypot"),
    ):
        path.write_text(FLEET_HEAD + machine_toml("pot", kernel="honeypot", **keys))
        r = daemon.cli("apply", str(path), check=False)
        assert r.returncode == 2 and expect in r.stderr, r.stderr
    k = fake_kernel(tmp_path / "linux", b"tty_log_fd=\0disguise_fd=")
    path.write_text(FLEET_HEAD + machine_toml("pot", kernel=str(k), disguise=str(bad)))
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2
    assert f"machine 'pot': disguise = '{bad}': {bad}: proc.cpuinfo: unknown key" in r.stderr
    assert daemon.ls() == {}
    assert not daemon.layout.machine("pot").exists()


def test_the_fleet_carries_the_debian_logins_per_machine() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmz6v9 admin@host"
    pw = "$6$salt$" + "a" * 86
    f = parse(machine_toml("web", ssh_keys=[key], admin_password_hash=pw), "f.toml")
    assert f.machines[0].ssh_keys == (key,) and f.machines[0].admin_password_hash == pw
    with pytest.raises(SpecError, match=r"machine 'web': ssh_keys = \['hello'\]: expected OpenSSH"):
        parse(machine_toml("web", ssh_keys=["hello"]), "f.toml")
    with pytest.raises(SpecError, match=r"admin_password_hash = 'secret': expected a crypt"):
        parse(machine_toml("web", admin_password_hash="secret"), "f.toml")


CHILD = textwrap.dedent(
    """
    import os, sys, time
    kernel = int(sys.argv[1])
    sys.stdin.read(1)  # the test has closed its end of the socket by now
    try:
        os.write(kernel, b"written while no daemon ran")
        print("ok", flush=True)
    except OSError as e:
        print(e.strerror, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("spare", [True, False])
def test_the_kernels_spare_end_keeps_the_channel_for_the_next_daemon(spare: bool) -> None:
    """A stand-in for the kernel holds the kernel end (and the spare copy of the host end);
    the 'daemon' closes its own end, as a dying daemon would. With the spare, the write
    succeeds and a new 'daemon' takes the host end back with pidfd_getfd and reads it;
    without, the writer gets EPIPE (the kernel would stop its tty log)."""
    c = ch.ttylog_channel()
    inode = c.inode
    fds = [c.kernel_fd, c.spare_fd] if spare else [c.kernel_fd]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(c.kernel_fd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=fds,
    )
    try:
        for fd in (c.kernel_fd, c.spare_fd):
            os.close(fd)
        c.close_host()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("x")
        child.stdin.flush()
        said = child.stdout.readline().strip()
        if not spare:
            assert said == "Broken pipe"
            return
        assert said == "ok"
        sock = ch.take_fd(child.pid, c.spare_fd, inode)
        try:
            assert sock.type == socket.SOCK_SEQPACKET
            assert sock.recv(100) == b"written while no daemon ran"
        finally:
            sock.close()
        with pytest.raises(ch.ChannelError, match=f"not the channel's socket {inode + 1}"):
            ch.take_fd(child.pid, c.spare_fd, inode + 1)
        with pytest.raises(ch.ChannelError, match="Bad file descriptor"):
            ch.take_fd(child.pid, 999, inode)
    finally:
        child.kill()
        child.communicate()  # reaps it and closes its pipes


def test_the_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    st = ch.PotState(
        boot=3, pid=77, pid_start=12345, ttylog=ch.ChannelState(40, 41, 999), profile="baremetal"
    )
    ch.write_state(tmp_path, st)
    assert ch.read_state(tmp_path) == st
    (tmp_path / ch.STATE_FILE).write_text('{"version": 9}')
    with pytest.raises(ValueError, match="honeypot.json: unknown version"):
        ch.read_state(tmp_path)
    ch.remove_state(tmp_path)
    assert ch.read_state(tmp_path) is None


def test_a_failed_launch_closes_every_host_end_it_had_made() -> None:
    """The clean-up the feature's before_boot registers, run as the supervisor runs it when the
    launcher fails: both host ends closed, the started disguise server stopped (no task fails)."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from warden.honeypot.checks import NO_DISGUISE
    from warden.honeypot.disguise_server import DisguiseServer
    from warden.honeypot.service import HoneypotService

    failures: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failures.append(record)

    handler = Catch(logging.ERROR)
    logging.getLogger("warden").addHandler(handler)

    async def scenario() -> tuple[ch.Channel, ch.Channel, DisguiseServer]:
        svc = HoneypotService(core=None)  # type: ignore[arg-type]  # _abandon needs none
        tty, dsg = ch.ttylog_channel(), ch.disguise_channel()
        server = DisguiseServer(NO_DISGUISE, dsg.host, "pot")
        await server.start()
        pot = SimpleNamespace(name="pot", disguise=server)  # what _abandon reads of a PotGuest
        cleanup = svc._abandon(pot, [tty, dsg])  # type: ignore[arg-type]
        for fd in (*tty.kernel_fds(), *dsg.kernel_fds()):  # what the supervisor closes
            os.close(fd)
        cleanup()
        await asyncio.sleep(0.1)  # the spawned stop() runs
        return tty, dsg, server

    try:
        tty, dsg, server = asyncio.run(scenario())
    finally:
        logging.getLogger("warden").removeHandler(handler)
    assert tty.host.fileno() == -1 and dsg.host.fileno() == -1
    assert server.closed and failures == []
