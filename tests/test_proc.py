"""warden.proc: the one reader of the host's /proc/PID/stat and status."""

import os
import subprocess
import sys
import time

from warden import proc

PR_SET_NAME = 15


def test_start_time_survives_a_command_name_with_parentheses_and_spaces() -> None:
    # A process chooses its own name: ") 9 9" must not shift the fields read after it.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes, sys, time\n"
            f"ctypes.CDLL(None).prctl({PR_SET_NAME}, b'x) 9 9 Z', 0, 0, 0)\n"
            "print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
        with open(f"/proc/{child.pid}/stat") as f:
            text = f.read()
        assert "x) 9 9 Z" in text
        expected = int(text.rsplit(")", 1)[1].split()[19])
        assert proc.start_time(child.pid) == expected
        assert proc.running(child.pid, expected)
        assert not proc.running(child.pid, expected + 1)  # another process at a reused pid
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_a_zombie_or_a_missing_pid_does_not_run() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = proc.start_time(child.pid)
    deadline = time.monotonic() + 10
    while proc.running(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # it exits; not reaped yet: a zombie
    assert proc.stat_fields(child.pid) is not None  # still there, as a zombie
    assert not proc.running(child.pid, start)
    child.wait()
    assert proc.start_time(child.pid) is None
    assert not proc.running(child.pid)


def test_status_fields() -> None:
    st = proc.status(os.getpid())
    assert st["Pid"] == str(os.getpid())
    assert st["Uid"].split()[0] == str(os.getuid())
