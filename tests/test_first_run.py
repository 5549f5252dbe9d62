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


EXAMPLE = ROOT / "examples" / "fleet.toml"


def _owner_keys(text: str) -> dict[str, list[str]]:
    import tomllib

    return {o["name"]: list(o.get("keys", [])) for o in tomllib.loads(text)["owner"]}


def _keygen(directory: Path, name: str = "id_ed25519", comment: str = "reader@laptop") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(directory / name)],
        check=True,
    )
    return (directory / f"{name}.pub").read_text().strip()


def test_add_key_gives_the_example_owners_the_readers_key(tmp_path: Path) -> None:
    """The example's owners keep their keys and gain the reader's; the file's comments stay;
    a second run adds nothing; the fleet still validates."""
    from warden.spec import fleet
    from warden.spec.owner_keys import add_key

    key = _keygen(tmp_path)
    text = EXAMPLE.read_text()
    out = add_key(text, key, source=str(EXAMPLE))
    before, after = _owner_keys(text), _owner_keys(out)
    assert after == {name: [key, *keys] for name, keys in before.items()}
    assert add_key(out, key, source="copy") == out
    assert [line for line in text.splitlines() if "#" in line] == [
        line for line in out.splitlines() if "#" in line
    ]
    fleet.parse(out, "copy")
    only_bob = add_key(text, key, owners=["bob"], source="x")
    assert _owner_keys(only_bob) == {**before, "bob": [key, *before["bob"]]}


def test_add_key_takes_any_layout_of_owner_tables() -> None:
    """An owner with no keys, a multi-line keys array, a key after other fields."""
    from warden.spec.owner_keys import add_key

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1haWxvcmRlci1rZXktZm9yLXRlc3RzLTAwMDAw me@here"
    text = (
        '[[owner]]\nname = "a"\n\n'
        '[[owner]]\nname = "b"\nadmin = true\nkeys = [\n  "ssh-ed25519 AAAAC3Nz b@x",\n]\n'
        '[[machine]]\nname = "m"\nowner = "a"\n'
    )
    out = add_key(text, key, source="t")
    assert _owner_keys(out) == {"a": [key], "b": [key, "ssh-ed25519 AAAAC3Nz b@x"]}
    with pytest.raises(Exception, match="no owner named 'c'"):
        add_key(text, key, owners=["c"], source="t")


def test_fleet_add_key_finds_the_invoking_users_key(home: Layout, tmp_path: Path) -> None:
    """`warden fleet add-key FLEET` (what `make up` runs): the key of the user who ran sudo,
    else of root (here: $HOME), goes into a copy under WARDEN_HOME; the tracked file is not
    touched. Without any key it says how to make one and copies the file as it is."""
    user_home = tmp_path / "reader"
    key = _keygen(user_home / ".ssh")
    env = {**os.environ, "WARDEN_HOME": str(home.home), "HOME": str(user_home)}
    env.pop("SUDO_USER", None)
    tracked = EXAMPLE.read_bytes()
    r = subprocess.run(
        [*WARDEN, "fleet", "add-key", str(EXAMPLE)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    copy = home.home / "fleets" / "fleet.toml"
    assert r.stdout.strip() == str(copy)
    assert f"alice, bob may log in with {user_home}/.ssh/id_ed25519.pub" in r.stderr
    assert all(keys[0] == key for keys in _owner_keys(copy.read_text()).values())
    assert EXAMPLE.read_bytes() == tracked

    (user_home / ".ssh" / "id_ed25519.pub").unlink()
    r = subprocess.run(
        [*WARDEN, "fleet", "add-key", str(EXAMPLE)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "no public key in" in r.stderr and "ssh-keygen -t ed25519" in r.stderr
    assert copy.read_bytes() == tracked
