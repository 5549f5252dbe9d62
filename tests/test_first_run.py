"""Issue 18, section 2: a newcomer's first run works. The guest-free part.

Tests with guests are in test_first_run_guests.py.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from warden.paths import Layout
from warden.uml import kernel

ROOT = Path(__file__).resolve().parent.parent


def _counting_gcc(bindir: Path, counter: Path) -> None:
    """A `gcc` first on PATH that records every compile (not `--version`) and is slow, so that
    concurrent builders really overlap, then runs the real compiler."""
    real = subprocess.run(["which", "gcc"], capture_output=True, text=True, check=True)
    bindir.mkdir()
    script = bindir / "gcc"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) ;; *) echo "$$" >> {counter}; sleep 0.5 ;; esac\n'
        f'exec {real.stdout.strip()} "$@"\n'
    )
    script.chmod(0o755)


_BUILD_IN_PROCESS = """
import sys
from pathlib import Path
from warden.paths import Layout
from warden.uml import kernel
lay = Layout(home=Path(sys.argv[1]), cache=Path(sys.argv[2]))
sys.stdin.read()  # the start signal: every process is ready
print(kernel.xstate_shim(lay))
"""


def test_shim_builds_once_from_8_threads_and_4_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an empty cache, 8 threads and 4 processes ask for the shim at the same time: every one
    gets the same working file, the compiler runs once, and no temporary file is left."""
    cache = tmp_path / "cache"
    counter = tmp_path / "compiles"
    counter.touch()
    _counting_gcc(tmp_path / "bin", counter)
    path_env = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    monkeypatch.setenv("PATH", path_env)
    lay = Layout(home=tmp_path / "home", cache=cache)

    outputs = [tmp_path / f"process-{i}.out" for i in range(4)]
    procs = []
    for out in outputs:
        with out.open("wb") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUILD_IN_PROCESS, str(lay.home), str(cache)],
                    stdin=subprocess.PIPE,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PATH": path_env},
                )
            )
    start = threading.Barrier(8 + 1)
    results: list[object] = []

    def build() -> None:
        start.wait()
        try:
            results.append(kernel.xstate_shim(lay))
        except Exception as e:  # each failure is reported below, with what it said
            results.append(e)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    start.wait()
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    for t in threads:
        t.join(60)
    for p in procs:
        p.wait(60)
    outs = [out.read_text() for out in outputs]

    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == [], failures
    assert [p.returncode for p in procs] == [0] * 4, outs
    paths = {str(r) for r in results} | {out.strip() for out in outs}
    assert len(paths) == 1, paths
    shim = Path(paths.pop())
    assert shim.read_bytes()[:4] == b"\x7fELF"
    assert len(counter.read_text().split()) == 1, "the compiler ran more than once"
    assert sorted(p.name for p in shim.parent.iterdir() if p.name != ".lock") == [
        "xstate_shim.c",
        "xstate_shim.so",
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_the_cli_prints_only_what_the_user_caused(home: Layout) -> None:
    """`warden up` (with the concentrator, hence asyncssh), `warden ls`, `warden status` and
    `warden daemon` print their own lines and nothing from a dependency: no warning, no
    traceback. Every line `up` prints is one of its own ("warden: ...")."""
    from tests.conftest import FLEET_HEAD

    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    fleet = home.home / "fleet.toml"
    fleet.write_text(FLEET_HEAD + f'[concentrator]\nlisten = "127.0.0.1:{_free_port()}"\n')
    said, (ls, status) = _serve_once(env, ["up", str(fleet)], signal.SIGINT, ["ls"], ["status"])
    assert "Warning" not in said and "Traceback" not in said, said
    assert all(line.startswith("warden: ") for line in _lines(said)), said
    assert ls.stderr == "" and status.stderr == "", (ls.stderr, status.stderr)
    assert _lines(ls.stdout) == ["no machines; apply a fleet file with `warden apply FLEET` or "
                                 "`warden up FLEET`"]  # fmt: skip
    said, _ = _serve_once(env, ["daemon"], signal.SIGTERM)
    assert "Warning" not in said and "Traceback" not in said, said


WARDEN = [sys.executable, "-m", "warden"]


def _cli(env: dict[str, str], *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([*WARDEN, *args], env=env, capture_output=True, text=True, timeout=60)


def _serve_once(
    env: dict[str, str], args: list[str], stop: signal.Signals, *commands: list[str]
) -> tuple[str, list["subprocess.CompletedProcess[str]"]]:
    """Run `warden ARGS` (a daemon) until it answers, run each command against it, stop it
    with `stop`; return what the daemon printed and the commands' results."""
    import tempfile
    import time

    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [*WARDEN, *args], env=env, stdout=out, stderr=out, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            while _cli(env, "status").returncode != 0:
                assert proc.poll() is None and time.monotonic() < deadline, "no daemon"
                time.sleep(0.1)
            results = [_cli(env, *c) for c in commands]
            os.killpg(proc.pid, stop)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        return out.read().decode(errors="replace"), results
