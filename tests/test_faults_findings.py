"""What the fault campaign (tests/test_faults.py) found, pinned down at the exact bad point.

A daemon killed while it stops a guest, or while a snapshot holds the guest stopped: the next
daemon must finish what was asked (the guest ends stopped, as the admin wanted) and must not
leave a guest frozen that nobody will ever resume. The state machine's part is tested with
scripted events; the two faults are then injected at the exact bad point into real guests.

A start on a WARDEN_HOME with no room left: the daemon could not write the guest's row, and the
start stopped half-way, leaving the guest "starting" with no launch and no timer to end it.
It must fail with the reason and leave nothing starting.
"""

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from tests.support import faults
from tests.support.daemon import DaemonProc
from warden.api.client import ApiClient
from warden.app.compose import build
from warden.daemon import machine as m
from warden.daemon.core import Daemon
from warden.errors import Conflict
from warden.paths import Layout


def restored(state: m.State, desired: str) -> m.Machine:
    """A machine as a new daemon reads it from the database (Supervisor.restore)."""
    mm = m.Machine("g")
    mm.state, mm.desired, mm.pid = state, desired, 42
    return mm


def test_a_guest_reattached_while_stopping_is_stopped_again() -> None:
    mm = restored(m.State.STOPPING, "stopped")
    actions = mm.handle(m.Reattached(42), 0)
    assert mm.state is m.State.STOPPING and mm.desired == "stopped"
    assert m.Mconsole("cad") in actions
    assert any(isinstance(a, m.StartTimer) and a.timer == "stop" for a in actions)
    # it powers off; the new daemon is not its parent, so the status is unknown
    mm.handle(m.Exited(None, None), 1)
    assert mm.state is m.State.STOPPED and mm.desired == "stopped"
    assert mm.last_exit is not None and mm.last_exit["reason"] == "stopped"


def test_the_stop_escalates_after_a_reattach_too() -> None:
    mm = restored(m.State.STOPPING, "stopped")
    mm.handle(m.Reattached(42), 0)
    assert m.Mconsole("halt") in mm.handle(m.Timeout("stop"), 30)
    assert m.KillGroup() in mm.handle(m.Timeout("stop"), 40)


def test_a_guest_that_ended_while_stopping_with_no_daemon_is_stopped_not_crashed() -> None:
    mm = restored(m.State.STOPPING, "stopped")
    mm.handle(m.Exited(None, None), 0)  # Supervisor.reattach found it gone
    assert mm.state is m.State.STOPPED
    assert mm.last_exit is not None and "no daemon" in str(mm.last_exit["reason"])


def test_a_reattached_paused_guest_keeps_what_the_admin_asked() -> None:
    mm = restored(m.State.PAUSED, "running")
    mm.handle(m.Reattached(42), 0)
    assert mm.state is m.State.PAUSED and mm.desired == "running"
    mm = restored(m.State.RUNNING, "running")
    mm.handle(m.Reattached(42), 0)
    assert mm.state is m.State.RUNNING and mm.desired == "running"


def test_a_prune_a_killed_daemon_left_half_done_is_finished_by_the_next(
    home: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply --prune saves the new fleet, kills the dropped machine and destroys it once it is
    down; a daemon killed in between left the machine's row and files for good (the campaign's
    kill during apply), and a later fleet naming it again started from that stale row."""
    # The daemon runs in this test's own process: it must not make pytest a child subreaper,
    # or every guest orphaned by a later test's kill -9 of its daemon becomes pytest's zombie
    # (test_hostile_channels counts this process's children).
    from warden.host import ns

    monkeypatch.setattr(ns, "set_child_subreaper", lambda: None)
    from warden.daemon.files import MachineFiles
    from warden.sessionlog import codec as sl
    from warden.sessionlog import store as logstore
    from warden.store import MachineRow, Store

    store = Store(home.db)
    store.save_fleet("f", faults.OWNER + faults.machine("a", False))
    store.put_machine(MachineRow("c3", "stopping", "stopped", 4242, 1, 1, None, None, None, None))
    store.close()
    files = MachineFiles(home.machine("c3"), "c3")
    files.create(("con0",))
    # its console log as the killed daemon left it: records, no END
    key = logstore.load_key(home, create=True)
    meta = {
        "format": "warden-session-log",
        "machine": "c3",
        "line": "con0",
        "boot": 1,
        "part": 1,
        "key_id": sl.key_id(key),
    }
    data, mac = sl.encode_header(meta, key)
    record, _ = sl.encode_record(key, mac, sl.OUTPUT, 1, 1_700_000_000_000_000, b"evidence")
    (files.logs / "con0-1.wlog").write_bytes(data + record)

    async def start_daemon() -> Daemon:
        d = build(home).daemon  # the daemon `warden daemon` runs, with its features
        await d.open()
        await d.start()
        await d.shutdown(stop_guests=False)
        return d

    d = asyncio.run(start_daemon())
    assert "c3" not in d.sups
    store = Store(home.db)
    assert store.machine("c3") is None
    store.close()
    assert not home.machine("c3").exists()
    # logs are evidence: kept, and closed as any log no daemon writes any more
    (archived,) = (home.home / "archive").glob("c3-*/con0-1.wlog*")
    verdict = sl.verify(archived, key, live=False)
    assert verdict.status == "complete", verdict.message


def _kill_and_restart(d: DaemonProc) -> None:
    d.kill9()
    d.start(timeout=120)


@pytest.mark.guest
@pytest.mark.slow
def test_a_daemon_killed_while_stopping_a_guest_leaves_it_stopped(daemon: DaemonProc) -> None:
    daemon.apply(faults.OWNER + faults.machine("c1", True))
    faults.wait_states(daemon, {"c1": "running"})
    assert faults.answers(daemon, "c1", 60) is None  # init takes ctrl-alt-del from here on
    api = ApiClient(daemon.layout)
    since = faults.last_event_id(daemon.layout)
    api.post("/machines/c1/stop", {"wait": False})
    faults.wait_for(
        "the stop", lambda: "stopping" in faults.event_kinds(daemon.layout, "c1", since), 10, 0.01
    )
    _kill_and_restart(daemon)
    faults.wait_for(
        "c1 to end", lambda: daemon.ls()["c1"]["state"] not in ("running", "stopping"), 60, 0.5
    )
    c1 = daemon.ls()["c1"]
    assert (c1["state"], c1["desired"]) == ("stopped", "stopped"), c1
    assert faults.group_pids(daemon.layout, "c1") == []
    _kill_and_restart(daemon)  # and the next daemon does not start it again
    time.sleep(2)
    assert daemon.ls()["c1"]["state"] == "stopped"


@pytest.mark.guest
@pytest.mark.slow
def test_a_daemon_killed_inside_a_snapshot_leaves_no_guest_frozen(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    daemon.apply(faults.OWNER + faults.machine("c2", True))
    faults.wait_states(daemon, {"c2": "running"})
    assert faults.answers(daemon, "c2", 60) is None
    # What snapshot.take does first, and what a kill -9 in the middle of its copy leaves:
    # the kernel stopped by its mconsole, waiting for a `go` that never comes.
    assert daemon.cli("mconsole", "c2", "stop").returncode == 0
    assert faults.answers(daemon, "c2", 3) is not None  # frozen indeed
    _kill_and_restart(daemon)
    assert faults.answers(daemon, "c2", 30) is None
    assert daemon.ls()["c2"]["state"] == "running"


@pytest.mark.guest
@pytest.mark.slow
def test_a_start_on_a_full_home_fails_with_the_reason_and_leaves_no_guest_starting(
    minimal_image: Path,
) -> None:
    with faults.small_home(64) as lay:
        d = DaemonProc(lay).start()
        try:
            d.apply(faults.OWNER + faults.machine("f2", False, image=str(minimal_image)))
            d.cli("create", "f2")
            filler, _ = faults.fill(lay.home)
            r = d.cli("start", "f2", check=False)
            assert r.returncode != 0
            assert "internal error" not in r.stderr, r.stderr
            assert "No space left" in r.stderr, r.stderr
            state = d.ls()["f2"]["state"]
            assert state in ("stopped", "crashed"), state  # not "starting", with nothing to come
            assert faults.group_pids(lay, "f2") == []
            filler.unlink()
            d.cli("start", "f2")  # room again: it boots
            assert faults.answers(d, "f2", 60) is None
        finally:
            d.close()


@pytest.mark.guest
@pytest.mark.slow
def test_a_daemon_killed_while_a_snapshot_copies_leaves_no_half_snapshot(
    daemon: DaemonProc,
) -> None:
    """Before snapshots were made in a staging directory (src/warden/disk/snapshot.py), the
    half-made directory stayed, no listing showed it, and the name was refused for good."""
    daemon.apply(faults.OWNER + faults.machine("c2", True))
    faults.wait_states(daemon, {"c2": "running"})
    faults.sh(
        daemon, "c2", "dd if=/dev/urandom of=/data bs=1M count=48 2>/dev/null; sync", timeout=300
    )
    api = ApiClient(daemon.layout, timeout=60)
    snaps = daemon.layout.machine("c2") / "snapshots"
    caught = None
    for attempt in range(5):  # the copy takes tens of ms: catch it in the act
        name = f"s{attempt}"

        def take(n: str = name) -> None:
            with contextlib.suppress(Exception):  # the daemon dies under it
                api.post("/machines/c2/snapshots", {"snapshot": n})

        t = threading.Thread(target=take, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        copying = f".{name}.tmp-*/.disk.cow.tmp-*"  # the copy, in the snapshot's staging
        while time.monotonic() < deadline and not list(snaps.glob(copying)):
            time.sleep(0.0005)
        if list(snaps.glob(copying)):
            daemon.kill9()
            caught = name
            t.join(10)
            break
        t.join(60)
    assert caught is not None, "no snapshot was caught while copying"
    daemon.start(timeout=120)
    assert faults.answers(daemon, "c2", 30) is None
    left = snaps / caught
    assert not left.exists() or (left / "meta.json").exists(), sorted(os.listdir(left))
    r = daemon.cli("disk", "snapshot", "c2", "--name", caught, check=False)
    assert r.returncode == 0, r.stderr
    assert (left / "meta.json").exists()
    assert sorted(p.name for p in snaps.iterdir() if p.name.startswith(".")) == []  # swept


def test_a_stored_fleet_that_no_longer_validates_destroys_nothing(home: Layout) -> None:
    """A newer warden refuses what an older one stored (here a kernel argument warden now
    reserves). The daemon read that as an empty fleet, took every guest for a half-done prune
    and destroyed its disk. Now it refuses to start, changing nothing, and `warden up` with a
    fixed file attaches the guests that file names."""
    from warden.daemon.core import FleetFile
    from warden.daemon.files import MachineFiles
    from warden.store import MachineRow, Store

    store = Store(home.db)
    stale = faults.OWNER + faults.machine("a", False) + 'kernel_args = ["mem=4G"]\n'
    store.save_fleet("old.toml", stale)
    store.put_machine(MachineRow("a", "stopped", "stopped", None, 1, 1, None, None, None, None))
    store.close()
    files = MachineFiles(home.machine("a"), "a")
    files.create(("con0",))
    (home.machine("a") / "evidence").write_bytes(b"the guest's disk")

    async def start(up: FleetFile | None) -> Daemon:
        d = build(home).daemon
        try:
            await d.open(fallback=up)
            await d.start(up)
        finally:
            await d.shutdown(stop_guests=False)
        return d

    with pytest.raises(Conflict, match=r"old.toml\) no longer validates: .*mem=.*warden up FILE"):
        asyncio.run(start(None))
    other = faults.OWNER + faults.machine("b", False)
    with pytest.raises(Conflict, match=r"new.toml does not name a, which still exist"):
        asyncio.run(start(FleetFile(other, "new.toml")))
    store = Store(home.db)
    assert store.machine("a") is not None and store.load_fleet() == ("old.toml", stale)
    store.close()
    assert (home.machine("a") / "evidence").read_bytes() == b"the guest's disk"

    # the fixed file is what the daemon attaches with
    async def attach() -> None:
        d = build(home).daemon
        await d.open(fallback=FleetFile(faults.OWNER + faults.machine("a", False), "fixed.toml"))
        assert set(d.sups) == {"a"} and d.ctx.stored_error is not None
        await d.shutdown(stop_guests=False)

    asyncio.run(attach())
