"""Issue 5, must-show: the SSH concentrator, driven with OpenSSH's real `ssh` client.

Keys are made for each test with ssh-keygen; the daemon is real and the guests are real UML
kernels (the minimal busybox image), reached through the concentrator on 127.0.0.1.
"""

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import machine_toml
from tests.support.daemon import DaemonProc
from tests.support.ssh_client import SshSession, SshUser

pytestmark = pytest.mark.guest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    d: DaemonProc
    port: int
    alice: SshUser
    bob: SshUser
    root: SshUser
    sessions: list[SshSession]

    def fleet(self, *machines: str, idle: int = 1800, extra: str = "") -> str:
        head = f"""
[concentrator]
listen = "127.0.0.1:{self.port}"
idle_timeout = {idle}

[[owner]]
name = "alice"
keys = ["{self.alice.public}"]

[[owner]]
name = "bob"
keys = ["{self.bob.public}"]

[[owner]]
name = "root"
admin = true
keys = ["{self.root.public}"]
{extra}
"""
        return head + "".join(machines)

    def apply(self, *machines: str, **kw: object) -> None:
        self.d.apply(self.fleet(*machines, **kw))  # type: ignore[arg-type]
        wait_listening(self.port)

    def session(self, user: SshUser, *command: str, **kw: object) -> SshSession:
        s = user.session(self.port, *command, **kw)
        self.sessions.append(s)
        return s


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


def wait_running(d: DaemonProc, *names: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ls = d.ls()
        if all(ls[n]["state"] == "running" for n in names):
            return
        assert time.monotonic() < deadline, {n: ls[n]["state"] for n in names}
        time.sleep(0.1)


@pytest.fixture
def env(daemon: DaemonProc, tmp_path: Path) -> Iterator[Env]:
    e = Env(
        daemon,
        free_port(),
        SshUser(tmp_path, "alice"),
        SshUser(tmp_path, "bob"),
        SshUser(tmp_path, "root"),
        [],
    )
    try:
        yield e
    finally:
        for s in e.sessions:
            s.close()


def shell_ready(s: SshSession) -> None:
    """Wait until the guest's shell answers on the attached line."""
    tag = f"ready{time.monotonic_ns()}"
    deadline = time.monotonic() + 60
    while True:
        s.send(f"echo {tag[:5]}''{tag[5:]}\n")
        try:
            s.expect(tag, timeout=2)
            return
        except AssertionError:
            assert time.monotonic() < deadline, "the guest shell never answered"


def logs(d: DaemonProc, name: str, *args: str) -> list[dict[str, object]]:
    out = d.cli("logs", "dump", name, "--json", *args).stdout
    return [json.loads(x) for x in out.splitlines()]


def test_alice_attaches_runs_a_command_and_it_is_logged(env: Env) -> None:
    env.apply(machine_toml("web1", "alice"), machine_toml("db1", "bob"))
    wait_running(env.d, "web1")
    s = env.session(env.alice, "web1")
    s.expect("attached to web1 con0 as the writer", stream="err")
    shell_ready(s)
    s.send("echo $((6*7))-$((100+23))\n")
    s.expect(r"\n42-123\r?\n")
    s.send("uname -n\n")
    s.expect(r"\nweb1\r?\n")
    s.close_input()
    assert s.wait() == 0
    # Everything typed is in the log, in order, as alice's input.
    recs = logs(env.d, "web1")
    typed = "".join(str(r["data"]) for r in recs if r["type"] == "input")
    assert "echo $((6*7))-$((100+23))\nuname -n\n" in typed
    assert {r["user"] for r in recs if r["type"] == "input"} == {"alice"}
    kinds = [r["type"] for r in recs]
    attach = next(r for r in recs if r["type"] == "attach")
    assert attach["user"] == "alice" and str(attach["source"]).startswith("ssh:127.0.0.1:")
    assert "detach" in kinds
    printed = "".join(str(r["data"]) for r in recs if r["type"] == "output")
    assert "42-123" in printed
    r = env.d.cli("logs", "verify", "web1")
    assert r.returncode == 0 and "live" in r.stdout, r.stdout


def test_owner_reaches_only_her_guests_admin_reaches_all(env: Env) -> None:
    env.apply(
        machine_toml("web1", "alice", autostart=False),
        machine_toml("db1", "bob", autostart=False),
    )
    theirs = env.alice.run(env.port, "db1")
    missing = env.alice.run(env.port, "nosuch")
    assert theirs.returncode == missing.returncode == 1
    assert b"no guest named 'db1' that you can reach" in theirs.stderr
    # Another owner's guest and a guest that does not exist get the same answer.
    assert theirs.stderr.replace(b"db1", b"X") == missing.stderr.replace(b"nosuch", b"X")
    assert theirs.stdout == missing.stdout == b""
    mine = env.alice.run(env.port)  # no command: a listing, not a shell
    assert mine.returncode == 0
    assert b"web1" in mine.stdout and b"db1" not in mine.stdout
    everything = env.root.run(env.port, "list")
    assert b"web1" in everything.stdout and b"db1" in everything.stdout
    assert b"OWNER" in everything.stdout
    # The admin attaches to bob's (stopped) guest; she is told it is not running.
    s = env.session(env.root, "db1", "--spy")
    s.expect(r"attached to db1 con0 as a spy.*db1 is not running", stream="err")
    s.close_input()
    assert s.wait() == 0


def test_wrong_key_and_unknown_user_are_refused(env: Env, tmp_path: Path) -> None:
    env.apply(machine_toml("web1", "alice", autostart=False))
    (tmp_path / "other").mkdir()
    impostor = SshUser(tmp_path / "other", "alice")
    assert impostor.public != env.alice.public
    wrong = impostor.run(env.port, "web1")
    assert wrong.returncode == 255
    assert b"Permission denied (publickey)" in wrong.stderr
    nobody = SshUser(tmp_path, "nobody")
    nobody.key = env.alice.key  # a valid key, but for a user the fleet does not have
    unknown = nobody.run(env.port, "web1")
    assert unknown.returncode == 255
    assert unknown.stderr.replace(b"nobody@", b"alice@") == wrong.stderr
    good = env.alice.run(env.port, "list")
    assert good.returncode == 0 and b"web1" in good.stdout


def test_refusals_no_shell_commands_transfer_or_forwarding(env: Env, tmp_path: Path) -> None:
    env.apply(machine_toml("web1", "alice", autostart=False))
    r = env.alice.run(env.port, "cat", "/etc/passwd")
    assert r.returncode == 1 and b"no shell and no host commands" in r.stderr
    assert b"root:" not in r.stdout
    r = env.alice.run(env.port, "/bin/sh -c id")
    assert r.returncode == 1 and b"no shell and no host commands" in r.stderr
    r = env.alice.run(env.port, "help")
    assert r.returncode == 0 and b"Ctrl-] then . detaches" in r.stdout
    base = [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-i",
        str(env.alice.key),
    ]
    import subprocess

    sftp = subprocess.run(
        ["sftp", *base, "-P", str(env.port), "alice@127.0.0.1"],
        input=b"ls\n",
        capture_output=True,
        timeout=60,
    )
    assert sftp.returncode != 0 and b"SFTP is not offered" in sftp.stderr, sftp.stderr
    src = tmp_path / "f.txt"
    src.write_text("x")
    scp = subprocess.run(
        ["scp", *base, "-P", str(env.port), str(src), "alice@127.0.0.1:/tmp/f.txt"],
        capture_output=True,
        timeout=60,
    )
    assert scp.returncode != 0 and b"not offered" in scp.stderr, scp.stderr
    legacy = subprocess.run(
        ["scp", "-O", *base, "-P", str(env.port), str(src), "alice@127.0.0.1:/tmp/f.txt"],
        capture_output=True,
        timeout=60,
    )
    assert legacy.returncode != 0 and b"file transfer" in legacy.stderr, legacy.stderr
    stdio = env.alice.run(env.port, extra=("-W", "127.0.0.1:22"), log_level="INFO")
    assert stdio.returncode != 0 and b"port forwarding is not offered" in stdio.stderr
    local = free_port()
    fwd = env.session(
        env.alice, extra=("-N", "-L", f"{local}:127.0.0.1:{env.port}"), log_level="INFO"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", local), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline and fwd.proc.poll() is None, fwd.err
            time.sleep(0.1)
    with conn:
        assert conn.recv(100) == b""  # the channel was refused: nothing comes through
    fwd.expect("administratively prohibited: warden: port forwarding is not offered", stream="err")


def test_spy_sees_output_and_its_keystrokes_go_nowhere(env: Env) -> None:
    env.apply(machine_toml("web1", "alice"))
    wait_running(env.d, "web1")
    writer = env.session(env.alice, "web1")
    shell_ready(writer)
    spy = env.session(env.alice, "web1", "--spy")
    spy.expect("as a spy", stream="err")
    writer.send("echo $((6*7))-seen-by-spy\n")
    writer.expect(r"\n42-seen-by-spy")
    spy.expect(r"\n42-seen-by-spy")
    spy.send("echo $((1+1))-typed-by-spy\n")
    writer.send("echo $((2+3))-after\n")
    writer.expect(r"\n5-after")
    spy.expect(r"\n5-after")
    assert b"2-typed-by-spy" not in writer.out and b"2-typed-by-spy" not in spy.out
    writer.close_input()
    spy.close_input()
    assert writer.wait() == 0 and spy.wait() == 0
    recs = logs(env.d, "web1")
    assert not any("typed-by-spy" in str(r.get("data", "")) for r in recs)
    modes = [(r["user"], r["mode"]) for r in recs if r["type"] == "attach"]
    assert modes == [("alice", "rw"), ("alice", "spy")]


def test_second_writer_refused_unless_it_takes_over(env: Env) -> None:
    env.apply(machine_toml("web1", "alice"))
    wait_running(env.d, "web1")
    first = env.session(env.alice, "web1")
    shell_ready(first)
    second = env.session(env.alice, "web1")
    assert second.wait() == 1
    assert b"has a writer (alice from ssh:127.0.0.1:" in second.err
    assert b"--force" in second.err
    boss = env.session(env.root, "web1", "--force")
    boss.expect("as the writer", stream="err")
    first.expect("root from ssh:127.0.0.1:.* took over con0; you are a spy now", stream="err")
    first.send("echo $((3*3))-from-demoted\n")
    boss.send("echo $((4*4))-from-boss\n")
    boss.expect(r"\n16-from-boss")
    first.expect(r"\n16-from-boss")
    assert b"9-from-demoted" not in boss.out
    for s in (first, boss):
        s.close_input()
        assert s.wait() == 0
    recs = logs(env.d, "web1")
    take = [r for r in recs if r["type"] == "takeover"]
    assert len(take) == 1
    assert take[0]["user"] == "root" and take[0]["previous"] == "alice"
    assert str(take[0]["source"]).startswith("ssh:127.0.0.1:")
    typed = [(r["user"], r["data"]) for r in recs if r["type"] == "input"]
    assert ("root", "echo $((4*4))-from-boss\n") in typed or any(
        u == "root" and "from-boss" in str(d) for u, d in typed
    )
    assert not any("from-demoted" in str(d) for _, d in typed)


def test_escape_detaches_and_idle_timeout(env: Env) -> None:
    env.apply(machine_toml("web1", "alice"), idle=3)
    wait_running(env.d, "web1")
    s = env.session(env.alice, "web1")
    shell_ready(s)
    s.send(b"\x1d.")
    assert s.wait() == 0
    assert b"[warden: detached]" in s.err
    idle = env.session(env.alice, "web1", "--spy")
    idle.expect("as a spy", stream="err")
    assert idle.wait(timeout=60) == 0
    assert b"no input for 3 s" in idle.err
    recs = logs(env.d, "web1")
    reasons = [r["reason"] for r in recs if r["type"] == "detach"]
    assert "detached" in reasons and any("no input for 3 s" in str(x) for x in reasons)


def test_password_login(env: Env, tmp_path: Path) -> None:
    from passlib.hash import sha512_crypt

    pw_hash = sha512_crypt.using(rounds=5000).hash("correct horse")
    assert pw_hash.startswith("$6$") and "rounds=" not in pw_hash
    carol = f'\n[[owner]]\nname = "carol"\npassword_hash = "{pw_hash}"\n'
    env.apply(machine_toml("web1", "carol", autostart=False), extra=carol)
    import subprocess

    def login(password: str) -> subprocess.CompletedProcess[bytes]:
        return SshUser(tmp_path, "carol", key=False).password_login(env.port, password, "list")[0]

    ok = login("correct horse")
    assert ok.returncode == 0 and b"web1" in ok.stdout, ok.stderr
    bad = login("wrong horse")
    assert bad.returncode == 255 and b"Permission denied" in bad.stderr


def test_attach_to_a_serial_line(env: Env) -> None:
    env.apply(machine_toml("web1", "alice", serial_lines=1))
    wait_running(env.d, "web1")
    s = env.session(env.alice, "web1:ssl0")
    s.expect("attached to web1 ssl0 as the writer", stream="err")
    shell_ready(s)
    s.send("tty; echo $((5*5))-on-serial\n")
    s.expect(r"/dev/ttyS0\r?\n25-on-serial")
    s.close_input()
    assert s.wait() == 0
    none = env.alice.run(env.port, "web1:ssl3")
    assert none.returncode == 1
    assert b"web1 has no line 'ssl3' (its lines: con0, ssl0)" in none.stderr
    recs = logs(env.d, "web1:ssl0")
    assert any("25-on-serial" in str(r.get("data", "")) for r in recs)
