"""Issue 16 part 3's pool on real guests: a `[[pool]]` of minimal guests (telnetd on port 22
through `warden.telnetd=22`, the minimal image has no sshd) in the lab's namespace, reached
from two attacker namespaces.

Two attacker addresses get two different guests, the same address again gets the same one,
the guest sees the attacker's own address, the pool refills, and a guest left idle is
recycled (evidence kept) and comes back warm and pristine.
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.daemon import DaemonProc
from tests.support.netlab import guest_sh, net_fleet, wait_for
from tests.support.poollab import ATTACKER2_IP, HOST2_IP, PoolLab

pytestmark = [pytest.mark.guest, pytest.mark.slow]

NET = '[[network]]\nname = "px0"\nsubnet = "10.78.0.0/24"\n'
ATTACKER1_IP = "192.168.250.2"
POOL = """
[[pool]]
name = "pot"
owner = "alice"
network = "px0"
addresses = ["10.78.0.50", "10.78.0.51", "10.78.0.52"]
size = 2
idle = "10s"
wait = "60s"
memory = "64M"
kernel_args = "warden.telnetd=22"
"""
TELNET = "b'\\xff"  # telnetd's first bytes: IAC (option negotiation)


@pytest.fixture
def lab(daemon: DaemonProc) -> Iterator[PoolLab]:
    with PoolLab() as lab:
        yield lab
    print("---- daemon log ----\n" + daemon.log_text()[-6000:])
    for g in ("pot-1", "pot-2", "pot-3"):
        r = daemon.cli("events", g, check=False)
        print(f"---- events of {g} ----\n" + r.stdout[-3000:])


def events(d: DaemonProc, machine: str) -> list[dict[str, Any]]:
    return list(json.loads(d.cli("events", machine, "--json").stdout))


def kinds(d: DaemonProc, machine: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events(d, machine) if e["kind"] == kind]


def test_each_address_gets_its_own_pristine_guest_and_idle_ones_are_recycled(
    daemon: DaemonProc, lab: PoolLab
) -> None:
    daemon.apply(net_fleet(lab.host, [], networks=NET) + POOL)
    wait_for(
        "two warm guests",
        lambda: kinds(daemon, "pot-1", "pool-warm") and kinds(daemon, "pot-2", "pool-warm"),
        240,
        0.5,
    )
    assert daemon.ls()["pot-3"]["state"] in ("stopped", "absent", "created")

    # The first attacker: a guest of its own, which sees its address.
    first = lab.connect(lab.outside)
    assert first.startswith(TELNET), first
    held = lab.hold(lab.outside, 30)
    try:
        claimed = wait_for(
            "the claim",
            lambda: [
                (g, e["src"]) for g in ("pot-1", "pot-2") for e in kinds(daemon, g, "pool-claimed")
            ],
            10,
            0.2,
        )
        assert len(claimed) == 1 and claimed[0][1] == ATTACKER1_IP, claimed
        mine = claimed[0][0]
        other = "pot-2" if mine == "pot-1" else "pot-1"
        seen = wait_for(
            "the connection in the guest",
            lambda: (out := guest_sh(daemon, mine, "netstat -tn")) and ATTACKER1_IP in out and out,
            30,
            0.5,
        )
        assert f"{ATTACKER1_IP}:" in seen and ":22 " in seen, seen
    finally:
        held.kill()
        held.wait()

    # The same address again: the same guest (no new claim); another address: another guest.
    assert lab.connect(lab.outside).startswith(TELNET)
    assert lab.connect(lab.attacker2, HOST2_IP).startswith(TELNET)
    wait_for("the second claim", lambda: kinds(daemon, other, "pool-claimed"), 10, 0.2)
    assert [e["src"] for e in kinds(daemon, other, "pool-claimed")] == [ATTACKER2_IP]
    assert [e["src"] for e in kinds(daemon, mine, "pool-claimed")] == [ATTACKER1_IP]
    pools = json.loads(daemon.cli("pools", "--json").stdout)["pot"]
    assert pools[mine] == {"slot": "taken", "src": ATTACKER1_IP}, pools
    assert pools[other] == {"slot": "taken", "src": ATTACKER2_IP}, pools
    table = daemon.cli("pools").stdout
    assert f"pot          {mine:24} taken    {ATTACKER1_IP}" in table, table
    # Two taken, size 2: the third guest is booted to keep the pool warm.
    wait_for("the refill", lambda: kinds(daemon, "pot-3", "pool-warm"), 240, 0.5)

    # The first guest is marked by its attacker; left idle for 10 s it is recycled with its
    # evidence kept, and comes back warm for anyone, without the mark.
    guest_sh(daemon, mine, "echo loot > /root/loot")
    recycled = wait_for("the idle recycle", lambda: kinds(daemon, mine, "recycled"), 120, 0.5)
    assert recycled[0]["reason"].startswith(f"pool: {ATTACKER1_IP} idle "), recycled
    # The old boot's evidence is packed once the fresh boot is up (operations.py `_keep`), at
    # a low priority: on a loaded host the boot alone may take minutes, so wait for it first.
    wait_for("warm again", lambda: len(kinds(daemon, mine, "pool-warm")) == 2, 240, 0.5)
    outcome = wait_for(
        "its evidence kept or failed",
        lambda: kinds(daemon, mine, "evidence-kept") or kinds(daemon, mine, "evidence-failed"),
        120,
        0.5,
    )
    assert outcome[0]["kind"] == "evidence-kept", outcome
    assert guest_sh(daemon, mine, "ls /root").strip() == ""
    # The attacker's next connection is new again and gets a warm guest.
    assert lab.connect(lab.outside).startswith(TELNET)


def test_a_new_daemon_recycles_the_guests_the_old_one_handed_out(
    daemon: DaemonProc, lab: PoolLab
) -> None:
    """Which address had which guest died with the daemon (no pool state on disk): the next
    daemon recycles every pool guest still running before it offers any."""
    pool = POOL.replace("size = 2", "size = 1").replace('idle = "10s"', 'idle = "1h"')
    pool = pool.replace(', "10.78.0.52"', "")
    daemon.apply(net_fleet(lab.host, [], networks=NET) + pool)
    wait_for("a warm guest", lambda: kinds(daemon, "pot-1", "pool-warm"), 240, 0.5)
    assert lab.connect(lab.outside).startswith(TELNET)
    wait_for("the claim", lambda: kinds(daemon, "pot-1", "pool-claimed"), 10, 0.2)
    guest_sh(daemon, "pot-1", "echo loot > /root/loot")

    daemon.kill9()
    # The gate ends with the daemon and takes the table with it: nobody routes to a guest
    # that nobody watches.
    wait_for(
        "the table gone",
        lambda: "warden_pool" not in lab.run(lab.host, "nft", "list", "tables").stdout,
        10,
        0.2,
    )
    daemon.start()  # pot-1 still runs (guests outlive the daemon): the reason below says so
    recycled = wait_for("the recycle", lambda: kinds(daemon, "pot-1", "recycled"), 120, 0.5)
    assert recycled[0]["reason"] == "pool: running when the daemon started", recycled
    wait_for("its evidence", lambda: kinds(daemon, "pot-1", "evidence-kept"), 120, 0.5)
    wait_for("warm again", lambda: len(kinds(daemon, "pot-1", "pool-warm")) == 2, 240, 0.5)
    assert guest_sh(daemon, "pot-1", "ls /root").strip() == ""
    assert lab.connect(lab.outside).startswith(TELNET)
