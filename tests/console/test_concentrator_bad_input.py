"""Issue 5, bad input to the concentrator: garbage on the SSH port, a 1 MB paste."""

import os
import socket
import time

import pytest

from tests.conftest import machine_toml
from tests.console.test_concentrator import Env, env, logs, shell_ready, wait_running  # noqa: F401

pytestmark = pytest.mark.guest


def test_garbage_on_the_ssh_port(env: Env) -> None:  # noqa: F811
    env.apply(machine_toml("web1", "alice", autostart=False))
    payloads = [
        os.urandom(4096),
        b"SSH-2.0-garbage\r\n" + os.urandom(65536),
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x00" * 100000,
        b"SSH-2.0-x\r\n" + (1 << 31).to_bytes(4, "big") + os.urandom(64),  # absurd length
    ]
    for data in payloads:
        with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
            assert s.recv(256).startswith(b"SSH-2.0-")
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass  # the server ends the connection by itself
            except (ConnectionResetError, BrokenPipeError):
                pass
    # Half-open connections that never speak do not block others.
    idle = [socket.create_connection(("127.0.0.1", env.port), timeout=10) for _ in range(20)]
    try:
        r = env.alice.run(env.port, "list")
        assert r.returncode == 0 and b"web1" in r.stdout
        t0 = time.monotonic()
        assert "web1" in env.d.ls()
        print(f"warden ls after the garbage: {time.monotonic() - t0:.3f}s")
    finally:
        for s in idle:
            s.close()
    errors = [
        x
        for x in env.d.log_text().splitlines()
        if ("ERROR" in x or "Traceback" in x) and ("asyncssh" in x or "concentrator" in x)
    ]
    assert errors == []


def test_a_one_megabyte_paste_arrives_whole_and_is_logged(env: Env) -> None:  # noqa: F811
    env.apply(machine_toml("web1", "alice"))
    wait_running(env.d, "web1")
    s = env.session(env.alice, "web1")
    shell_ready(s)
    body = b"-paste-0123456789abcdefghijklmnopqrstuvwxyz-0123456789ABCDEFGHIJKLMNOPQRSTUVWX\n"
    paste = b"".join(b"%07d" % i + body for i in range(12337))
    assert len(paste) >= 1 << 20
    s.send("stty -echo; cat > /tmp/paste\n")
    time.sleep(1)
    s.send(paste)
    s.send(b"\x04")
    s.send("stty echo; wc -c < /tmp/paste; tail -n 1 /tmp/paste\n")
    m = s.expect(rb"# (\d+)\r?\n0012336-paste", timeout=240)
    assert int(m.group(1)) == len(paste)
    s.close_input()
    assert s.wait() == 0, (s.err, env.d.log_text()[-3000:])
    typed = b"".join(
        str(r["data"]).encode("latin-1") for r in logs(env.d, "web1") if r["type"] == "input"
    )
    assert paste in typed  # every byte, in order
