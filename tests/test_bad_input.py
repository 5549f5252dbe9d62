"""Issue 2, bad input: each gives a clear error and leaves nothing half-created."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from warden.paths import Layout

WARDEN = [sys.executable, "-m", "warden"]


def cli(
    home: Layout, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WARDEN, *args],
        env={**os.environ, "WARDEN_HOME": str(home.home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_without_daemon(home: Layout) -> None:
    r = cli(home, "ls")
    assert r.returncode == 2
    assert r.stderr.startswith("warden: no warden daemon is running for")
    assert "start one with `warden daemon`" in r.stderr
    assert "Traceback" not in r.stderr


def test_up_with_a_bad_fleet_file_starts_nothing(home: Layout) -> None:
    f = home.home / "fleet.toml"
    f.write_text(FLEET_HEAD + machine_toml("web1", memory="64X"))
    r = cli(home, "up", str(f))
    assert r.returncode == 2
    assert f"{f}: machine 'web1': memory = '64X': expected a size" in r.stderr
    assert not home.db.exists() and not (home.machines / "web1").exists()


def test_apply_mistyped_key(daemon: DaemonProc) -> None:
    path = daemon.layout.home / "fleet.toml"
    path.write_text(FLEET_HEAD + machine_toml("web1") + "imgae = 'minimal'\n")
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2
    assert "machine 'web1': key 'imgae' is unknown (did you mean 'image'?)" in r.stderr
    assert daemon.ls() == {}


def test_name_used_twice(daemon: DaemonProc) -> None:
    path = daemon.layout.home / "fleet.toml"
    path.write_text(FLEET_HEAD + machine_toml("web1") + machine_toml("web1"))
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2 and "machine 'web1': name is used twice" in r.stderr
    assert daemon.ls() == {}


def test_missing_image(daemon: DaemonProc) -> None:
    path = daemon.layout.home / "fleet.toml"
    path.write_text(FLEET_HEAD + machine_toml("web1", image="nosuch"))
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2
    assert "image 'nosuch' is not built (known: minimal)" in r.stderr
    assert "warden image build nosuch" in r.stderr
    assert daemon.ls() == {} and not daemon.layout.machine("web1").exists()


def test_image_that_is_not_ext4(daemon: DaemonProc, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    path = daemon.layout.home / "fleet.toml"
    path.write_text(FLEET_HEAD + machine_toml("web1", image=str(junk)))
    r = daemon.cli("apply", str(path), check=False)
    assert r.returncode == 2
    assert f"image {junk} is not an ext4 filesystem" in r.stderr
    assert daemon.ls() == {} and not daemon.layout.machine("web1").exists()


def test_no_uml_kernel_installed(home: Layout, minimal_image: Path) -> None:
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    minimal.build(ImageStore(home), NullProgress())
    d = DaemonProc(home, env={"WARDEN_STOCK_KERNEL": "/nonexistent/linux.uml"}).start()
    try:
        r = d.apply(FLEET_HEAD + machine_toml("web1", autostart=False))
        r = d.cli("start", "web1", check=False)
        assert r.returncode == 2
        assert "no UML kernel installed: /nonexistent/linux.uml is missing" in r.stderr
        assert "apt-get install user-mode-linux" in r.stderr
        info = d.ls()["web1"]
        assert info["state"] == "crashed" and info["last_exit"]["reason"] == "launch failed"
        cg = Path(f"/sys/fs/cgroup/unified/warden-{home.instance}/web1")
        assert not cg.exists()
    finally:
        d.close()
        d.assert_clean()


def test_corrupted_cow_header(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("web1", autostart=False))
    daemon.cli("create", "web1")
    cow = daemon.layout.machine("web1") / "disk.cow"
    with cow.open("r+b") as f:
        f.write(b"XXXX")  # the magic
    r = daemon.cli("start", "web1", check=False)
    assert r.returncode == 2
    assert f"{cow}" in r.stderr and "magic" in r.stderr
    info = daemon.ls()["web1"]
    assert info["state"] == "crashed" and info["pid"] is None
    events = json.loads(daemon.cli("events", "web1", "--json").stdout)
    assert events[-1]["kind"] == "launch-failed"
