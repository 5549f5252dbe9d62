"""Issue 18: what a real guest prints cannot drive the operator's terminal, and `warden
console` works from scripts (no TTY, stdin from a pipe, a file or /dev/null).

Each test boots the minimal busybox guest; the guest itself prints the hostile sequences
(printf on its console, a USER_NOTIFY through /proc/mconsole), as an intruder with root would.
"""

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import run_on, wait_state
from tests.support.daemon import DaemonProc

pytestmark = pytest.mark.guest

WARDEN = [sys.executable, "-m", "warden"]
# What the guest prints: a clipboard write (OSC 52), a title report query, a DSR/CPR query, a
# DA query, a DECRQSS (DCS), an APC, a C1 CSI (UTF-8 encoded) query, and a coloured word.
HOSTILE = (
    r"\033]52;c;cHduZWQ=\007\033[21t\033[6n\033[c\033P$qm\033\\\033_apc\033\\"
    r"\302\2336n\033[1;31mred-%s\033[0m\n"
)
FORBIDDEN = (b"\x1b]", b"\x1b[21t", b"\x1b[6n", b"\x1b[c", b"\x1bP", b"\x1b_", b"\xc2\x9b", b"\x9b")


def hostile_print(tag: str) -> str:
    return f"printf '{HOSTILE}' {tag}"


def assert_clean(out: bytes) -> None:
    for seq in FORBIDDEN:
        assert seq not in out, (seq, out[-600:])


def console(
    d: DaemonProc, *args: str, stdin: object = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*WARDEN, "console", *args],
        env=d.env,
        stdin=stdin,  # type: ignore[arg-type]
        capture_output=True,
        timeout=timeout,
    )


def test_scripted_console_prints_no_terminal_query(daemon: DaemonProc) -> None:
    """`echo cmd | warden console web1 --timeout 1`: no raw ESC[6n (busybox's own query) nor
    any sequence the guest printed on purpose; colours stay. --raw shows them all."""
    daemon.apply(FLEET_HEAD + machine_toml("web1"))
    wait_state(daemon, "web1", "running")
    run_on(daemon, "web1", "true")  # the shell is up
    r = subprocess.run(
        [*WARDEN, "console", "web1", "--timeout", "1"],
        env=daemon.env,
        input=(hostile_print("one") + "\n").encode(),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert b"\x1b[1;31mred-one\x1b[0m" in r.stdout, r.stdout
    assert_clean(r.stdout)
    raw = subprocess.run(
        [*WARDEN, "console", "web1", "--timeout", "1", "--raw"],
        env=daemon.env,
        input=(hostile_print("two") + "\n").encode(),
        capture_output=True,
        timeout=60,
    )
    assert b"red-two" in raw.stdout
    # The guest really sent them: the filter, not chance, removed them above.
    for seq in (b"\x1b]52;c;cHduZWQ=\x07", b"\x1b[6n", b"\x1bP$qm\x1b\\", b"\xc2\x9b6n"):
        assert seq in raw.stdout, (seq, raw.stdout[-600:])


def test_console_from_cron_with_stdin_from_devnull_or_a_file(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    """`warden console k1 --timeout 0.5 < /dev/null` ends after the timeout, with no
    traceback; a command in a regular file given as stdin runs."""
    daemon.apply(FLEET_HEAD + machine_toml("k1"))
    wait_state(daemon, "k1", "running")
    run_on(daemon, "k1", "true")
    t0 = time.monotonic()
    with open(os.devnull, "rb") as devnull:
        r = console(daemon, "k1", "--timeout", "0.5", stdin=devnull, timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr and b"Error" not in r.stderr, r.stderr
    assert took < 20, took
    script = tmp_path / "cmds"
    script.write_text("echo from-a-file-$((40+2))\n")
    with open(script, "rb") as f:
        r = console(daemon, "k1", "--timeout", "1", stdin=f, timeout=30)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"from-a-file-42" in r.stdout, r.stdout


class PtyClient:
    """`warden console ...` on a pseudo-terminal of its own: the interactive mode."""

    def __init__(self, d: DaemonProc, *args: str):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*WARDEN, "console", *args],
            env=d.env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.out = bytearray()

    def read_until(self, pattern: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out):
            left = deadline - time.monotonic()
            assert left > 0, (pattern, bytes(self.out[-600:]))
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:  # the slave side is gone
                    assert re.search(pattern, self.out), (pattern, bytes(self.out[-600:]))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def shell_ready(self, timeout: float = 60) -> None:
        """Type until the guest's shell answers, as a person does before typing a command.
        Once (1 in ~4 whole-suite runs) a line typed right after the attach was echoed by
        the guest's tty in canonical mode, not by busybox's line editor, and never run: the
        shell was not reading its line editor yet. That is the guest's, not the console's."""
        deadline = time.monotonic() + timeout
        tag = f"{time.monotonic_ns()}"
        while True:
            self.send(f"echo ready''{tag}\r".encode())
            try:
                self.read_until(f"ready{tag}".encode(), timeout=2)
                return
            except AssertionError:
                assert time.monotonic() < deadline, ("no shell", bytes(self.out[-600:]))

    def close(self) -> int:
        if self.proc.poll() is None:
            self.send(b"\x1d")  # Ctrl-] detaches
        try:
            rc = self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            os.close(self.master)
        return rc


def test_spy_gets_the_filtered_stream_the_writer_the_raw_one(daemon: DaemonProc) -> None:
    """The decision in docs/decisions/2026-12-07-operator-terminals.md, on real terminals: the
    writer's own interactive session is raw (its programs need their terminal's answers); a
    spy's terminal is never sent a query or an OSC/DCS/APC string."""
    daemon.apply(FLEET_HEAD + machine_toml("web1"))
    wait_state(daemon, "web1", "running")
    run_on(daemon, "web1", "true")
    writer = PtyClient(daemon, "web1")
    spy = PtyClient(daemon, "web1", "--spy")
    try:
        writer.read_until(rb"attached to web1")
        spy.read_until(rb"attached to web1")
        writer.shell_ready()
        writer.send((hostile_print("seen") + "\r").encode())
        writer.read_until(rb"red-seen")
        spy.read_until(rb"red-seen")
    finally:
        assert writer.close() == 0
        assert spy.close() == 0
    assert b"\x1b]52;c;cHduZWQ=\x07" in writer.out and b"\x1b[6n" in writer.out
    assert b"\x1b[1;31mred-seen\x1b[0m" in spy.out
    assert_clean(bytes(spy.out))


def test_replay_strips_what_the_guest_aimed_at_the_terminal(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("r1"))
    wait_state(daemon, "r1", "running")
    run_on(daemon, "r1", hostile_print("logged"))
    replay = [*WARDEN, "replay", "r1", "--speed", "100", "--max-idle", "0.01", "--events"]
    r = subprocess.run(replay, env=daemon.env, capture_output=True, timeout=60, check=True)
    assert b"\x1b[1;31mred-logged\x1b[0m" in r.stdout
    assert b"[warden log: attach" in r.stdout  # the markers are kept, escaped
    assert_clean(r.stdout)
    raw = subprocess.run(
        [*replay, "--raw"], env=daemon.env, capture_output=True, timeout=60, check=True
    )
    assert b"\x1b]52;c;cHduZWQ=\x07" in raw.stdout and b"\x1b[21t" in raw.stdout


def test_a_guest_notify_with_escapes_is_escaped_in_events(daemon: DaemonProc) -> None:
    """Root in the guest writes to /proc/mconsole (a USER_NOTIFY to the daemon): `warden
    events` shows the text with visible escapes, never the raw sequence."""
    daemon.apply(FLEET_HEAD + machine_toml("n1"))
    wait_state(daemon, "n1", "running")
    run_on(daemon, "n1", r"printf 'hi\033]52;c;cHduZWQ=\007\033[6n\302\233m' > /proc/mconsole")
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [*WARDEN, "events", "n1"], env=daemon.env, capture_output=True, timeout=60
        ).stdout
        if b"guest-notify" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    line = next(x for x in out.splitlines() if b"guest-notify" in x)
    assert b"hi\\x1b]52;c;cHduZWQ=\\x07\\x1b[6n\\x9bm" in line, line
    assert_clean(out)
