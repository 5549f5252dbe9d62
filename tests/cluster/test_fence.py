"""The fence process (warden.cluster.fence) with real cgroups and processes: it kills every
group under the parent it was given when the deadline passes, and not before; a daemon that
dies (EOF on the pipe) does not stop it."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from warden.host import cgroup


@pytest.fixture
def parent() -> Iterator[Path]:
    top = cgroup.detect().unified / f"warden-fencetest-{os.getpid()}"
    top.mkdir()
    yield top
    for g in top.iterdir():
        if g.is_dir():
            (g / "cgroup.kill").write_text("1")
            for _ in range(100):
                if not (g / "cgroup.procs").read_text().strip():
                    break
                time.sleep(0.02)
            g.rmdir()
    top.rmdir()


def sleeper(group: Path) -> subprocess.Popen[bytes]:
    group.mkdir()
    p = subprocess.Popen(["sleep", "60"])
    (group / "cgroup.procs").write_text(str(p.pid))
    return p


def fence(stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "warden.cluster.fence"], stdin=subprocess.PIPE, stderr=stderr
    )


def close(f: subprocess.Popen[bytes]) -> None:
    for stream in (f.stdin, f.stderr):
        if stream is not None:
            stream.close()


def send(f: subprocess.Popen[bytes], msg: dict[str, object]) -> None:
    assert f.stdin is not None
    f.stdin.write(json.dumps(msg).encode() + b"\n")
    f.stdin.flush()


def test_kills_at_the_deadline_and_renewals_move_it(parent: Path) -> None:
    a, b = sleeper(parent / "a"), sleeper(parent / "b")
    f = fence(subprocess.PIPE)
    try:
        for _ in range(5):  # renewals keep pushing the deadline out
            send(f, {"deadline": time.monotonic() + 0.6, "parent": str(parent)})
            time.sleep(0.3)
        assert a.poll() is None and b.poll() is None
        t = time.monotonic()
        a.wait(5)
        b.wait(5)
        assert time.monotonic() - t < 1.5
        assert a.returncode == b.returncode == -9
    finally:
        send(f, {"exit": True})
        f.wait(5)
    assert f.stderr is not None and b"fenced" in f.stderr.read()
    close(f)


def test_eof_keeps_the_last_deadline_then_fences_and_exits(parent: Path) -> None:
    a = sleeper(parent / "a")
    f = fence()
    send(f, {"deadline": time.monotonic() + 1.0, "parent": str(parent)})
    assert f.stdin is not None
    f.stdin.close()  # the daemon was killed with kill -9
    time.sleep(0.5)
    assert a.poll() is None  # not before the deadline
    a.wait(5)
    assert a.returncode == -9
    assert f.wait(5) == 0
    close(f)


def test_refuses_a_parent_outside_the_cgroup_tree(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    f = fence()
    send(f, {"deadline": time.monotonic() + 0.1, "parent": str(tmp_path)})
    time.sleep(0.4)
    send(f, {"deadline": time.monotonic() + 0.1, "parent": "/sys/fs/cgroup/../../" + str(tmp_path)})
    time.sleep(0.4)
    send(f, {"exit": True})
    assert f.wait(5) == 0
    close(f)
    # Accepted, it would have written cgroup.kill into the plain directory.
    assert list((tmp_path / "g").iterdir()) == []
