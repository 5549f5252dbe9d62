"""Three warden hosts over a real 3-member etcd, running real minimal guests."""

import fcntl
import os
import signal
import time

import pytest

from tests.cluster.conftest import (
    TTL,
    Cluster,
    Watch,
    guest_kernel,
    guest_pids,
    kinds_after,
    running_on,
)
from tests.support.daemon import kill_home
from warden.cluster.etcd import CALL_TIMEOUT
from warden.cluster.hostplan import GRACE

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def test_placement_spreads_then_move_and_drain(cluster: Cluster) -> None:
    c = cluster
    c.apply(c.fleet(c.machine("a") + c.machine("b") + c.machine("c", host="h3")))
    rows = c.wait("all three running", lambda r: all(running_on(r, n) for n in "abc"))
    hosts = {n: rows[n]["host"] for n in "abc"}
    assert hosts["c"] == "h3"
    assert sorted(hosts.values()) == ["h1", "h2", "h3"], hosts  # fewest guests first
    # A host's own daemon takes no local fleet: it would run what etcd has not given it.
    r = c.hosts["h1"].cli("apply", str(c.storage / "fleet.toml"), check=False)
    assert r.returncode == 2 and "apply fleets to the cluster" in r.stderr, r.stderr
    listed = c.host_list()
    assert all(listed[h]["alive"] for h in ("h1", "h2", "h3"))
    assert sum(len(h["machines"]) for h in listed.values()) == 3

    a_from = hosts["a"]
    a_to = next(h for h in ("h1", "h2") if h != a_from)
    t = time.monotonic()
    c.cli("move", "a", a_to)
    rows = c.wait("a moved", lambda r: running_on(r, "a") == a_to)
    assert rows["a"]["why"] == "move"
    print(f"\nmove: {time.monotonic() - t:.1f}s (a clean stop, the grace period, a boot)")
    # The host that gave `a` up never tried to boot it again (it once re-added a machine it
    # had just released, from a read taken before the release).
    assert "starting" not in kinds_after(c.hosts[a_from], "a", "cluster-released")

    c.cli("drain", a_to)
    rows = c.wait(
        f"{a_to} drained",
        lambda r: all(running_on(r, n) not in (None, a_to) for n in ("a", "b")),
    )
    assert c.host_list()[a_to]["machines"] == []


def test_failover_after_kill9_of_a_daemon_and_its_guests(cluster: Cluster) -> None:
    c = cluster
    t0 = time.monotonic()
    c.apply(c.fleet(c.machine("a") + c.machine("b")))
    rows = c.wait("both running", lambda r: all(running_on(r, n) for n in "ab"))
    first_boot = time.monotonic() - t0
    victim = rows["a"]["host"]
    watch = Watch(c, "a")
    try:
        dead = c.hosts[victim]
        dead.kill9()
        killed = kill_home(dead.layout)  # the host is gone: its guests with it
        assert killed, "the dead host's guest had processes to kill"
        t_dead = time.monotonic()
        rows = c.wait("a failed over", lambda r: running_on(r, "a") not in (None, victim))
        took = time.monotonic() - t_dead
    finally:
        watch.stop()
    assert watch.twice == 0, watch.seen
    assert rows["a"]["why"] == "failover"
    assert not c.host_list()[victim]["alive"]
    print(
        f"\nfailover: {took:.1f}s (lease TTL {TTL}s, grace {GRACE}s, first placement and "
        f"boot {first_boot:.1f}s)"
    )
    # TTL + one boot (+ the grace period); a boot on this shared machine takes up to ~30 s.
    assert took < TTL + GRACE + max(first_boot, 30), took


def test_never_twice_when_a_daemon_is_frozen(cluster: Cluster) -> None:
    c = cluster
    c.apply(c.fleet(c.machine("a")))
    rows = c.wait("a running", lambda r: running_on(r, "a") is not None)
    frozen = rows["a"]["host"]
    d = c.hosts[frozen]
    assert d.proc is not None
    before = guest_pids(d, "a")
    assert before
    watch = Watch(c, "a")
    try:
        d.proc.send_signal(signal.SIGSTOP)
        try:
            rows = c.wait("a taken over", lambda r: running_on(r, "a") not in (None, frozen))
            # The fence (outside the frozen daemon) killed it before another host started it.
            assert guest_pids(d, "a") == []
        finally:
            d.proc.send_signal(signal.SIGCONT)
        new_host = rows["a"]["host"]
        # The continued daemon finds its lease gone and does not start `a` again.
        time.sleep(TTL)
        assert running_on(c.ls(), "a") == new_host
        assert guest_pids(d, "a") == []
    finally:
        watch.stop()
    assert watch.twice == 0, watch.seen
    ran_on = {h for _, on in watch.seen for h in on}
    assert ran_on == {frozen, new_host}, watch.seen
    # The disk is held by the one kernel that runs it.
    lock = c.storage / "disks" / "a.lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert c.host_list()[frozen]["alive"]  # it joined again


@pytest.mark.parametrize("cluster_ttl", [15])
def test_one_etcd_member_down_keeps_working(cluster: Cluster) -> None:
    """Killing etcd's leader costs an election; the hosts ride it out and nothing running
    changes. TTL 15: the fence must outwait the election (docs/formats/cluster.md: TTL -
    margin - a renewal interval - a call timeout = 6.5 s here, against up to ~4.5 s for an
    election of these test members, whose election timeout is 2 s)."""
    c = cluster
    d, kernel, _ = c.run_alone("a")
    # m0 is the first URL (every client's first choice) and the leader: killing it costs an
    # election, during which a command waits rather than fails.
    c.etcd.make_leader("m0")
    c.etcd.stop("m0")
    c.apply(c.fleet(c.machine("a") + c.machine("b")))
    rows = c.wait("b placed and running", lambda r: running_on(r, "b") is not None)
    hosts = c.host_list()
    logs = c.logs()
    assert all(h["alive"] for h in hosts.values()), f"{hosts}\n{logs}"
    assert guest_kernel(d, "a") == kernel, f"a was restarted or moved: {rows}\n{logs}"
    for n, h in c.hosts.items():
        assert "fenced" not in h.log_text(), f"{n} fenced its guests:\n{logs}"


@pytest.mark.parametrize("cluster_ttl", [40])
def test_quorum_lost_briefly_changes_nothing_running(cluster: Cluster) -> None:
    c = cluster
    # docs/formats/cluster.md: the fence fires TTL - margin after the last answered renewal,
    # which may have been sent a renewal interval (TTL/10) and a call timeout (2 s) before
    # quorum was lost; and after quorum is back, a renewal takes up to an interval again.
    # TTL 40: the refused apply below alone waits ADMIN_CALL_TIMEOUT (6 s) of the outage.
    fence_after = c.ttl - max(c.ttl / 3, 2.0) - 2 * (c.ttl / 10) - CALL_TIMEOUT
    d, kernel, rows = c.run_alone("a")
    c.etcd.stop("m1")
    c.etcd.stop("m2")
    lost = time.monotonic()
    # Nothing can be written: a fleet apply fails, naming etcd, and changes nothing ...
    r = c.cli("apply", str(c.storage / "fleet.toml"), check=False)
    assert r.returncode == 2 and "etcd at" in r.stderr, r.stderr
    # ... and the running guest keeps running.
    assert guest_kernel(d, "a") == kernel
    c.etcd.start("m1")
    c.etcd.start("m2")
    while not c.etcd.healthy():
        time.sleep(0.1)
    outage = time.monotonic() - lost
    print(f"\nquorum lost for {outage:.1f}s (hosts fence after {fence_after:.1f}s without etcd)")
    assert outage < fence_after, "the outage outlasted the fence deadline: rerun"
    time.sleep(c.ttl)  # leases renewed again: no failover, no restart
    assert guest_kernel(d, "a") == kernel
    assert running_on(c.ls(), "a") == rows["a"]["host"]


def test_a_daemon_that_leaves_stops_its_guests_before_its_fence_fires(cluster: Cluster) -> None:
    c = cluster
    names = ("a", "b", "c")
    c.apply(c.fleet("".join(c.machine(n, host="h1") for n in names)))
    c.wait("three on h1", lambda r: all(running_on(r, n) == "h1" for n in names))
    c.apply(c.fleet("".join(c.machine(n) for n in names)))  # free to go elsewhere
    leaving = c.hosts["h1"]
    leaving.stop()  # SIGTERM: leave the cluster
    assert "fenced" not in leaving.log_text()  # every guest stopped cleanly, none killed
    c.wait("all three elsewhere", lambda r: all(running_on(r, n) in ("h2", "h3") for n in names))


def test_never_twice_when_a_frozen_daemon_would_restart_its_guest(cluster: Cluster) -> None:
    """No shared storage (so no disk lock): only the owner record and the fence keep `a` from
    running twice when the frozen daemon, continued, sees its guest die and its restart
    policy says to boot it again."""
    c = cluster
    fleet = c.fleet(c.machine("a", restart="always")).replace(f'storage = "{c.storage}"', "")
    c.apply(fleet)
    rows = c.wait("a running", lambda r: running_on(r, "a") is not None)
    frozen = rows["a"]["host"]
    d = c.hosts[frozen]
    assert d.proc is not None
    watch = Watch(c, "a")
    try:
        d.proc.send_signal(signal.SIGSTOP)
        try:
            c.wait("a taken over", lambda r: running_on(r, "a") not in (None, frozen))
        finally:
            d.proc.send_signal(signal.SIGCONT)
        time.sleep(TTL)
    finally:
        watch.stop()
    assert watch.twice == 0, watch.seen
    assert guest_pids(d, "a") == []
