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
