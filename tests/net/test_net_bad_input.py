"""Issue 7, bad input: every refusal names the problem and changes nothing (no bridge, no
rule, no dnsmasq, no guest, the applied fleet unchanged). No guest boots here."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD
from tests.support.daemon import DaemonProc
from tests.support.netlab import HOST_IP, Lab, net_fleet, net_machine, wait_for
from warden.api.client import ApiClient
from warden.paths import Layout

pytestmark = pytest.mark.guest  # needs root, namespaces and a daemon


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def refused(d: DaemonProc, text: str) -> str:
    path = d.layout.home / "bad.toml"
    path.write_text(text)
    r = d.cli("apply", str(path), check=False)
    assert r.returncode == 2, (r.stdout, r.stderr)
    return r.stderr


def assert_nothing_built(d: DaemonProc, lab: Lab, fleet_before: object) -> None:
    assert not [n for n in lab.links() if n.startswith(("wb-", "wt-", "wx-"))]
    assert not [c for c in lab.chains() if c[1] == "warden"]
    assert lab.pids() == [], "a process was started in the netns"
    assert ApiClient(d.layout).get("/fleet") == fleet_before


LAN = '[[network]]\nname = "lan0"\nsubnet = "10.77.0.0/24"\nnat = true\n'


def test_refused_fleets_change_nothing(daemon: DaemonProc, lab: Lab) -> None:
    daemon.apply(FLEET_HEAD)
    before = ApiClient(daemon.layout).get("/fleet")
    two = LAN + '[[network]]\nname = "lan1"\nsubnet = "10.77.0.128/25"\n'
    err = refused(daemon, net_fleet(lab.host, [], networks=two))
    assert "network 'lan1'" in err and "overlaps network 'lan0' (10.77.0.0/24)" in err
    err = refused(daemon, net_fleet(lab.host, [net_machine("a", [("lan0", "10.78.0.5")])]))
    assert "nic ip 10.78.0.5 is outside lan0's subnet 10.77.0.0/24" in err
    err = refused(
        daemon,
        net_fleet(
            lab.host,
            [net_machine("a", [("lan0", "10.77.0.5")]), net_machine("b", [("lan0", "10.77.0.5")])],
        ),
    )
    assert "machine 'b'" in err and "nic ip 10.77.0.5 is taken by machine 'a'" in err
    err = refused(
        daemon,
        net_fleet(lab.host, [net_machine("a", [("lan0", "10.77.0.5"), ("lan0", "10.77.0.5")])]),
    )
    assert "machine 'a': nic ip 10.77.0.5 is given to two of its NICs" in err
    # host-side: the netns's own veth holds 192.168.250.1/30
    err = refused(
        daemon,
        net_fleet(
            lab.host, [], networks='[[network]]\nname = "wan"\nsubnet = "192.168.250.0/24"\n'
        ),
    )
    assert f"subnet 192.168.250.0/24 overlaps {HOST_IP}/30 on {lab.veth_host}" in err
    assert f"network namespace '{lab.host}'" in err
    # a forward to a port something listens on in the netns
    lab.peer(lab.host, "accept", "2022", str(daemon.layout.home / "listener.log"))
    wait_for("the listener", lambda: (daemon.layout.home / "listener.log").exists())
    err = refused(daemon, net_fleet(lab.host, [net_machine("web1", forwards=["tcp:2022:22"])]))
    assert "forward tcp:2022:22: tcp port 2022 is already bound" in err
    assert f"network namespace '{lab.host}'" in err and "choose another host port" in err
    # an interface of someone else's with the name of warden's bridge
    lab.run(lab.host, "ip", "link", "add", "wb-lan0", "type", "bridge")
    err = refused(daemon, net_fleet(lab.host, [], networks=LAN))
    assert "interface wb-lan0 already exists" in err and "is not this warden's" in err
    lab.run(lab.host, "ip", "link", "del", "wb-lan0")
    for p in lab.procs:
        p.kill()
        p.wait()
    lab.procs.clear()
    assert daemon.ls() == {}
    assert_nothing_built(daemon, lab, before)
    # and the same fleet applies once the port is free
    daemon.apply(
        net_fleet(lab.host, [net_machine("web1", forwards=["tcp:2022:22"], autostart=False)])
    )
    wait_for("the bridge", lambda: "wb-lan0" in lab.links())


def test_a_port_taken_after_apply_refuses_the_start(daemon: DaemonProc, lab: Lab) -> None:
    daemon.apply(
        net_fleet(lab.host, [net_machine("web1", forwards=["udp:5353:53"], autostart=False)])
    )
    wait_for("the bridge", lambda: "wb-lan0" in lab.links())
    lab.spawn(
        lab.host,
        "python3",
        "-c",
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 5353))\n"
        "time.sleep(600)",
    )
    wait_for("the udp socket", lambda: ":5353" in lab.run(lab.host, "ss", "-lun").stdout)
    r = daemon.cli("start", "web1", check=False)
    assert r.returncode == 2
    assert "forward udp:5353:53: udp port 5353 is already bound" in r.stderr, r.stderr
    info = daemon.ls()["web1"]
    assert info["state"] in ("stopped", "crashed") and info["pid"] is None
    assert not [n for n in lab.links() if n.startswith("wt-")]
    assert not [c for c in lab.chains() if c[1] == "warden" and "web1" in c[2]]


@pytest.fixture
def no_nft_path(tmp_path: Path) -> str:
    """A PATH with every command of this machine but nft."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = Path(d) / name
            if name != "nft" and not (bindir / name).exists() and os.access(target, os.X_OK):
                (bindir / name).symlink_to(target)
    return str(bindir)


def test_nftables_missing(home: Layout, minimal_image: Path, no_nft_path: str, lab: Lab) -> None:
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    minimal.build(ImageStore(home), NullProgress())
    d = DaemonProc(home, env={"PATH": no_nft_path}).start()
    try:
        d.apply(FLEET_HEAD)
        before = ApiClient(home).get("/fleet")
        err = refused(d, net_fleet(lab.host, [net_machine("web1")]))
        assert "nftables is missing" in err and "apt-get install nftables" in err
        assert "nothing applied" in err
        assert_nothing_built(d, lab, before)
    finally:
        d.close()
        d.assert_clean()
