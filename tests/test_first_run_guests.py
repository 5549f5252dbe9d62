"""Issue 18, section 2: a newcomer's first run works, tried with real guests."""

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import WARDEN, DaemonProc, instance_groups
from tests.support.netlab import end_warden_up, net_fleet, net_machine, sh, wait_for, wait_running
from warden.images import minimal
from warden.images.store import ImageStore
from warden.paths import DEFAULT_CACHE, Layout, layout
from warden.progress import NullProgress

pytestmark = pytest.mark.guest

# Stopping a fleet of idle minimal guests takes a few seconds; on a loaded 2-core host, more.
STOP_BOUND = 90


@pytest.fixture
def empty_shim_cache(minimal_image: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A WARDEN_CACHE of this test's own with no shim built yet. Its images, kernels and uid
    claims are the machine's shared ones (symlinks), so only the shim starts from nothing."""
    shared = Path(os.environ.get("WARDEN_CACHE", DEFAULT_CACHE))
    cache = Path(tempfile.mkdtemp(prefix="wc-", dir="/tmp"))
    for part in ("images", "kernels", "uids"):
        (shared / part).mkdir(parents=True, exist_ok=True)
        (cache / part).symlink_to(shared / part)
    monkeypatch.setenv("WARDEN_CACHE", str(cache))
    yield cache
    import shutil

    shutil.rmtree(cache, ignore_errors=True)


def test_8_guests_start_at_once_on_an_empty_cache(
    empty_shim_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first boots of a fleet all ask for the xstate shim at once: each one boots."""
    h = Path(tempfile.mkdtemp(prefix="wh-", dir="/tmp"))
    monkeypatch.setenv("WARDEN_HOME", str(h))
    lay = layout(h)
    assert lay.cache == empty_shim_cache and not (lay.cache / "shim").exists()
    lay.ensure()
    minimal.build(ImageStore(lay), NullProgress())
    d = DaemonProc(lay).start()
    names = [f"s{i}" for i in range(8)]
    try:
        d.apply(FLEET_HEAD + "".join(machine_toml(n, image="minimal") for n in names))
        wait_running(d, *names)
        assert len(list((lay.cache / "shim").glob("*/xstate_shim.so"))) == 1
    finally:
        d.close()
        d.assert_clean()
        import shutil

        shutil.rmtree(h, ignore_errors=True)


def _fleet(home: Layout, netns: str, *names: str) -> Path:
    fleet = home.home / "fleet.toml"
    fleet.write_text(net_fleet(netns, [net_machine(n) for n in names]))
    return fleet


def _nothing_left(home: Layout, netns: str) -> list[str]:
    """What of this home still runs: cgroups, its netns, a dnsmasq of that netns."""
    left = [str(g) for g in instance_groups(home)]
    if Path("/run/netns", netns).exists():
        left.append(f"netns {netns}")
    dns = sh("pgrep", "-a", "dnsmasq", check=False).stdout.splitlines()
    return left + [p for p in dns if netns in p or str(home.home) in p]


def _guest_pids(home: Layout) -> list[int]:
    top = Path(f"/sys/fs/cgroup/unified/warden-{home.instance}")
    return [int(p) for p in top.glob("*/cgroup.procs") for p in p.read_text().split()]


def _up_ready(home: Layout, *names: str) -> DaemonProc:
    d = DaemonProc(home)
    wait_for("the daemon", lambda: d.cli("status", check=False).returncode == 0, 60)
    wait_running(d, *names)
    return d


# What a shell does for `warden up FLEET 2>&1 | tee LOG` typed at a terminal: both in one
# process group, the one the terminal signals. This harness leads that group (its own session)
# and, like the shell, survives the Ctrl-C; it prints tee's status and exits with up's.
_PIPELINE = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, lambda *_: None)  # a handler, not SIG_IGN: exec resets it
up = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
tee = subprocess.Popen(["tee", sys.argv[1]], stdin=up.stdout, stdout=subprocess.DEVNULL)
up.stdout.close()
print("tee", tee.wait(), flush=True)
sys.exit(up.wait())
"""


def test_ctrl_c_on_up_piped_through_tee_stops_everything(home: Layout, minimal_image: Path) -> None:
    """`warden up FLEET 2>&1 | tee up.log`, Ctrl-C: the terminal's SIGINT reaches tee too, so
    the daemon's stdout and stderr become a broken pipe at the moment it starts to stop. It
    still stops every guest and removes its network, and exits 0."""
    minimal.build(ImageStore(home), NullProgress())
    ns = f"wt{os.getpid() % 100000}"
    fleet = _fleet(home, ns, "p1", "p2")
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    log = open(home.home / "up.log", "wb")  # noqa: SIM115 - closed by end_warden_up
    tee_log = home.home / "tee.log"
    group = subprocess.Popen(
        [sys.executable, "-c", _PIPELINE, str(tee_log), *WARDEN, "up", str(fleet)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        _up_ready(home, "p1", "p2")
        assert len(_guest_pids(home)) >= 4
        os.killpg(group.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground group
        code = group.wait(STOP_BOUND)
        said = (home.home / "up.log").read_text()
        assert "tee -2" in said  # tee died of the SIGINT, as it does in a terminal
        assert (code, _nothing_left(home, ns)) == (0, []), said + tee_log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal.SIGKILL)
        end_warden_up(group, log, home, ns)


def test_closing_the_terminal_of_up_stops_everything(home: Layout, minimal_image: Path) -> None:
    """`warden up` in a terminal window that is closed: SIGHUP, and EIO on every write to the
    terminal after. The fleet is stopped as on Ctrl-C."""
    minimal.build(ImageStore(home), NullProgress())
    ns = f"wh{os.getpid() % 100000}"
    fleet = _fleet(home, ns, "h1")
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    master, slave = os.openpty()
    up = subprocess.Popen(
        [*WARDEN, "up", str(fleet)],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the terminal is its own
    )
    os.close(slave)
    screen = bytearray()
    closed = threading.Event()

    def read_screen() -> None:  # a terminal keeps reading what is written to it
        while not closed.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    screen.extend(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=read_screen)
    reader.start()
    log = open(home.home / "up.log", "wb")  # noqa: SIM115 - closed by end_warden_up
    try:
        _up_ready(home, "h1")
        closed.set()
        reader.join()
        os.close(master)  # the window closes: the terminal hangs up
        master = -1
        code = up.wait(STOP_BOUND)
        assert (code, _nothing_left(home, ns)) == (0, []), bytes(screen).decode(errors="replace")
    finally:
        closed.set()
        reader.join()
        if master >= 0:
            os.close(master)
        end_warden_up(up, log, home, ns)


def _start_up(home: Layout, fleet: Path, *options: str) -> "subprocess.Popen[bytes]":
    """`warden up` in its own process group, its output appended to HOME/up.log."""
    with open(home.home / "up.log", "ab") as log:
        return subprocess.Popen(
            [*WARDEN, "up", *options, str(fleet)],
            env={**os.environ, "WARDEN_HOME": str(home.home)},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _ctrl_c(home: Layout, up: "subprocess.Popen[bytes]") -> None:
    os.killpg(up.pid, signal.SIGINT)
    assert up.wait(STOP_BOUND) == 0, (home.home / "up.log").read_text()[-3000:]


def test_up_brings_its_fleet_up_every_time(home: Layout, minimal_image: Path) -> None:
    """`warden up`, Ctrl-C, `warden up` again: the fleet boots again (docker compose up does
    the same). `warden daemon` alone restores what each guest was last asked to be."""
    minimal.build(ImageStore(home), NullProgress())
    fleet = home.home / "fleet.toml"
    fleet.write_text(FLEET_HEAD + machine_toml("g1") + machine_toml("g2"))
    up = _start_up(home, fleet)
    d = DaemonProc(home)
    try:
        _up_ready(home, "g1", "g2")
        _ctrl_c(home, up)
        assert {m["state"] for m in _offline_ls(home).values()} == {"stopped"}
        # the last line says it is over (a newcomer saw "stopping 2 guests" and then nothing)
        said = (home.home / "up.log").read_text().splitlines()
        assert said[-1] == "warden: stopped; no guest is left running", said[-5:]
        up = _start_up(home, fleet)
        _up_ready(home, "g1", "g2")
        assert "2 machines (g1, g2 starting)" in (home.home / "up.log").read_text()
        d.cli("stop", "g2")
        os.killpg(up.pid, signal.SIGKILL)  # the daemon dies; g1 runs on without it
        up.wait()
        d.start()  # `warden daemon`: g1 was wanted running, g2 stopped
        ls = d.ls()
        assert (ls["g1"]["state"], ls["g2"]["state"]) == ("running", "stopped")
        assert ls["g1"]["pid"] in _guest_pids(home)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()
        d.close()
        d.assert_clean()


def _offline_ls(home: Layout) -> dict[str, dict[str, str]]:
    """Each machine's stored state, read from the database with no daemon running."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(home.db)) as db:
        rows = db.execute("SELECT name, state, desired FROM machines").fetchall()
    return {n: {"state": s, "desired": w} for n, s, w in rows}


def _home_processes(home: Layout) -> list[str]:
    """Every process whose command line or environment names this home."""
    out = []
    mark = str(home.home).encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if mark in (p / "cmdline").read_bytes() or mark in (p / "environ").read_bytes():
                out.append(f"{p.name} {(p / 'cmdline').read_bytes()[:200]!r}")
        except OSError:
            continue
    return out


def test_a_refused_up_leaves_nothing_running_and_prune_replaces_the_fleet(
    home: Layout, minimal_image: Path
) -> None:
    """After one fleet's `up` and Ctrl-C, `warden up` of another fleet is refused (its
    machines still exist) and leaves no netns, dnsmasq, cgroup or process behind; the refusal
    says what to do, and `warden up --prune` does it."""
    minimal.build(ImageStore(home), NullProgress())
    ns_a, ns_b = f"wa{os.getpid() % 100000}", f"wb{os.getpid() % 100000}"
    first = home.home / "first.toml"
    first.write_text(net_fleet(ns_a, [net_machine("a1")]))
    second = home.home / "second.toml"
    second.write_text(net_fleet(ns_b, [net_machine("b1")]))
    up = _start_up(home, first)
    try:
        _up_ready(home, "a1")
        _ctrl_c(home, up)
        assert _nothing_left(home, ns_a) == []

        up = _start_up(home, second)
        assert up.wait(60) == 2
        said = (home.home / "up.log").read_text()
        assert "machines a1 are not in the fleet file any more but still exist" in said, said
        assert _nothing_left(home, ns_a) + _nothing_left(home, ns_b) == []
        assert _home_processes(home) == []
        assert f"warden up --prune {second}" in said, said
        assert _offline_ls(home)["a1"]["state"] == "stopped"  # and the refusal changed nothing

        up = _start_up(home, second, "--prune")
        d = _up_ready(home, "b1")
        assert set(d.ls()) == {"b1"}
        assert not home.machine("a1").exists()
        _ctrl_c(home, up)
        assert _nothing_left(home, ns_a) + _nothing_left(home, ns_b) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        with open(home.home / "up.log", "ab") as log:
            end_warden_up(up, log, home, ns_a, ns_b)


def test_the_readers_own_key_reaches_the_concentrator(daemon: DaemonProc, tmp_path: Path) -> None:
    """The fleet's owners hold placeholder keys, so the reader's ssh is refused; the step
    `make up` runs (`warden fleet add-key`, which finds the reader's ~/.ssh/id_ed25519.pub)
    lets OpenSSH's ssh log in as alice with the reader's key and reach her guest's console."""
    from tests.console.test_concentrator import free_port, shell_ready, wait_listening
    from tests.support.ssh_client import SshUser

    port = free_port()
    src = tmp_path / "fleet.toml"
    src.write_text(
        FLEET_HEAD + f'[concentrator]\nlisten = "127.0.0.1:{port}"\n' + machine_toml("web1")
    )
    reader_home = tmp_path / "reader"
    (reader_home / ".ssh").mkdir(parents=True)
    reader = SshUser(reader_home / ".ssh", "ed25519")  # ~/.ssh/id_ed25519, as ssh-keygen makes
    reader.name = "alice"
    daemon.cli("apply", str(src))
    wait_listening(port)
    refused = reader.run(port, "list")
    assert refused.returncode == 255 and b"Permission denied (publickey)" in refused.stderr

    env = {**daemon.env, "HOME": str(reader_home)}
    env.pop("SUDO_USER", None)
    step = subprocess.run(
        [*WARDEN, "fleet", "add-key", str(src)], env=env, capture_output=True, text=True
    )
    assert step.returncode == 0, step.stderr
    daemon.cli("apply", step.stdout.strip())
    wait_running(daemon, "web1")
    listing = reader.run(port, "list")
    assert listing.returncode == 0 and b"web1" in listing.stdout, listing.stderr
    s = reader.session(port, "web1")
    try:
        s.expect("attached to web1 con0 as the writer", stream="err")
        shell_ready(s)
        s.send("echo $((6*7))\n")
        s.expect(r"\n42\r?\n")
    finally:
        s.close()
