"""Issue 3 through the daemon: snapshot, list, restore and diff a machine by its name."""

import json

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.daemon.test_guest_lifecycle import run_on, wait_state
from tests.support.daemon import DaemonProc

pytestmark = pytest.mark.guest


def test_snapshot_diff_restore_by_name(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("d1"))
    wait_state(daemon, "d1", "running")
    run_on(daemon, "d1", "echo one > /root/kept; sync")
    r = daemon.cli("disk", "snapshot", "d1", "--name", "clean")
    assert "snapshot clean of d1" in r.stdout
    # While it runs: files changed after the snapshot.
    run_on(daemon, "d1", "echo two > /root/later; rm /etc/issue; echo x >> /etc/profile; sync")
    report = json.loads(daemon.cli("disk", "diff", "d1", "--json").stdout)
    changes = {(c["kind"], c["path"]) for c in report["changes"]}
    assert {
        ("created", "/root/kept"),
        ("created", "/root/later"),
        ("deleted", "/etc/issue"),
        ("modified", "/etc/profile"),
    } <= changes
    assert daemon.ls()["d1"]["state"] == "running"  # diff of a running guest: via a snapshot
    snaps = json.loads(daemon.cli("disk", "snapshots", "d1", "--json").stdout)
    assert [s["name"] for s in snaps] == ["clean"]  # the diff's own snapshot is gone
    r = daemon.cli("disk", "restore", "clean", "-m", "d1", check=False)
    assert r.returncode == 2 and "stop it before a restore" in r.stderr
    daemon.cli("stop", "d1")
    daemon.cli("disk", "restore", "clean", "-m", "d1")
    daemon.cli("start", "d1")
    assert run_on(daemon, "d1", "cat /root/kept; ls /root/later 2>&1").split("\n")[0] == "one"
    assert "No such file" in run_on(daemon, "d1", "ls /root/later 2>&1")
    report = json.loads(daemon.cli("disk", "diff", "d1", "--json").stdout)
    paths = {c["path"] for c in report["changes"]}
    assert "/root/kept" in paths and "/root/later" not in paths and "/etc/issue" not in paths


def test_disk_commands_need_machine_or_cow(daemon: DaemonProc) -> None:
    r = daemon.cli("disk", "diff", check=False)
    assert r.returncode == 2 and "give a machine name or --cow PATH" in r.stderr
    r = daemon.cli("disk", "snapshots", "nosuch", check=False)
    assert r.returncode == 2 and "no machine named 'nosuch'" in r.stderr
