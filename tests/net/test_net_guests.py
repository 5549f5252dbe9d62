"""Issue 7, must-show: guest networking with real guests, in network namespaces the tests make.

Each test has a Lab: warden's [host] netns and an "outside" host linked to it by a veth
(tests/support/netlab.py). Guests are real UML kernels booted by a real daemon.
"""

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.support.daemon import WARDEN, DaemonProc
from tests.support.netlab import (
    HOST_IP,
    OUTSIDE_IP,
    Lab,
    end_warden_up,
    guest_sh,
    net_fleet,
    net_machine,
    read_log,
    sh,
    wait_for,
    wait_network,
    wait_running,
)
from warden.paths import Layout

pytestmark = pytest.mark.guest


@pytest.fixture
def lab(daemon: DaemonProc) -> "Lab":
    with Lab() as lab:
        yield lab
    # shown by pytest when the test failed
    print("---- daemon log ----\n" + daemon.log_text()[-6000:])


def serve_http(d: DaemonProc, name: str, port: int) -> None:
    guest_sh(
        d,
        name,
        f"mkdir -p /www; echo hello-from-$(hostname) > /www/index.html; httpd -p {port} -h /www",
    )


def http_get(lab: Lab, ns: str, url: str) -> str:
    r = lab.run(
        ns,
        "python3",
        "-c",
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
        url,
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {r.stderr.strip()[-300:]}"


def test_forward_in_and_egress_allow_out(daemon: DaemonProc, lab: Lab, tmp_path: Path) -> None:
    """The outside host reaches the guest's service through a port forward; the guest reaches
    the outside host (masqueraded: the outside sees the [host] netns address)."""
    daemon.apply(
        net_fleet(
            lab.host, [net_machine("web1", [("lan0", "10.77.0.10")], forwards=["tcp:2022:80"])]
        )
    )
    wait_running(daemon, "web1")
    wait_network(daemon, "web1", "10.77.0.10")
    serve_http(daemon, "web1", 80)
    assert http_get(lab, lab.outside, f"http://{HOST_IP}:2022/") == "hello-from-web1"
    log = tmp_path / "accept.log"
    lab.peer(lab.outside, "accept", "7000", str(log))
    wait_for("outside server", lambda: read_log(log))
    out = guest_sh(daemon, "web1", f"nc -w 3 {OUTSIDE_IP} 7000 </dev/null", timeout=8)
    assert f"peer={HOST_IP}" in out
    assert [e["peer"] for e in read_log(log) if "peer" in e] == [HOST_IP]


def test_egress_deny_keeps_intruders_in_and_the_guest_in(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    """A honeypot with egress "deny": its forwarded service answers the outside, but it cannot
    open a connection to the outside host, to the [host] netns or to another guest on its own
    bridge; the other guest (egress "allow") still reaches it."""
    daemon.apply(
        net_fleet(
            lab.host,
            [
                net_machine(
                    "pot", [("lan0", "10.77.0.10")], forwards=["tcp:2022:80"], egress="deny"
                ),
                net_machine("web", [("lan0", "10.77.0.11")]),
            ],
        )
    )
    wait_running(daemon, "pot", "web")
    wait_network(daemon, "pot", "10.77.0.10")
    wait_network(daemon, "web", "10.77.0.11")
    serve_http(daemon, "pot", 80)
    serve_http(daemon, "web", 80)
    assert http_get(lab, lab.outside, f"http://{HOST_IP}:2022/") == "hello-from-pot"
    log = tmp_path / "accept.log"
    lab.peer(lab.outside, "accept", "7000", str(log))
    lab.peer(lab.host, "accept", "7001", str(tmp_path / "host.log"))
    wait_for("servers", lambda: read_log(log) and read_log(tmp_path / "host.log"))
    script = (
        f"nc -w 2 {OUTSIDE_IP} 7000 </dev/null; echo out=$?; "
        f"nc -w 2 10.77.0.1 7001 </dev/null; echo host=$?; "
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 10.77.0.11 80; echo guest=$?; "
        "ping -c 1 -W 1 10.77.0.1 >/dev/null; echo ping=$?"
    )
    out = guest_sh(daemon, "pot", script, timeout=15)
    assert "peer=" not in out and "hello-from-web" not in out, out
    for key in ("out", "host", "guest", "ping"):
        assert f"{key}=0" not in out, f"pot reached {key}: {out}"
    assert [e for e in read_log(log) if "peer" in e] == []
    assert [e for e in read_log(tmp_path / "host.log") if "peer" in e] == []
    # the allowed guest reaches the outside and the honeypot's service (replies pass)
    get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.77.0.10 80"
    assert "hello-from-pot" in guest_sh(daemon, "web", get, timeout=8)
    assert f"peer={HOST_IP}" in guest_sh(
        daemon, "web", f"nc -w 3 {OUTSIDE_IP} 7000 </dev/null", timeout=8
    )
    # the drops were counted in the honeypot's own chain
    chain = [
        r["rule"]
        for r in lab.ruleset()["nftables"]
        if "rule" in r and r["rule"]["chain"] == "g-pot"
    ]
    drops = [e["counter"]["packets"] for r in chain for e in r["expr"] if "counter" in e]
    assert drops and drops[0] >= 4


def test_egress_rate_holds_new_connections_to_the_rate(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    """egress = "5/second": of 40 connections opened at once, the outside host accepts no more
    than the burst (5) plus 5 per second; with "allow" (web) all 40 arrive."""
    daemon.apply(
        net_fleet(
            lab.host,
            [
                net_machine("slow", [("lan0", "10.77.0.10")], egress="5/second"),
                net_machine("fast", [("lan0", "10.77.0.11")]),
            ],
        )
    )
    wait_running(daemon, "slow", "fast")
    wait_network(daemon, "slow", "10.77.0.10")
    wait_network(daemon, "fast", "10.77.0.11")
    log = tmp_path / "accept.log"
    lab.peer(lab.outside, "accept", "7000", str(log))
    wait_for("server", lambda: read_log(log))
    burst = (
        f"for i in $(seq 40); do nc -w 2 {OUTSIDE_IP} 7000 </dev/null >/dev/null 2>&1 & done; wait"
    )
    guest_sh(daemon, "fast", burst, timeout=20)
    fast = [e for e in read_log(log) if e.get("peer") == HOST_IP]
    assert len(fast) == 40
    start = len(read_log(log))
    guest_sh(daemon, "slow", burst, timeout=20)
    time.sleep(1)
    slow = [e for e in read_log(log)[start:] if "peer" in e]
    assert 5 <= len(slow) < 40
    span = slow[-1]["t"] - slow[0]["t"]
    # token bucket: at most burst + rate * elapsed (+1 for the bucket's granularity)
    assert len(slow) <= 5 + 5 * span + 1, (len(slow), span)


def _bytes_after(log: Path, t: float) -> int:
    return sum(e["n"] for e in read_log(log) if "n" in e and e["t"] > t)


def test_cut_stops_a_running_transfer_and_restore_brings_it_back(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    daemon.apply(net_fleet(lab.host, [net_machine("web1", [("lan0", "10.77.0.10")])]))
    wait_running(daemon, "web1")
    wait_network(daemon, "web1", "10.77.0.10")
    sink = tmp_path / "sink.log"
    lab.peer(lab.outside, "sink", "7001", str(sink))
    wait_for("sink", lambda: read_log(sink))
    # an endless transfer from the guest to the outside host
    guest_sh(daemon, "web1", f"(cat /dev/zero | nc {OUTSIDE_IP} 7001 &) ; sleep 1")
    wait_for("data flowing", lambda: _bytes_after(sink, time.monotonic() - 0.5) > 0)
    t0 = time.monotonic()
    out = daemon.cli("net", "cut", "web1").stdout
    t1 = time.monotonic()
    assert "web1: cut" in out
    time.sleep(3)
    last = max(e["t"] for e in read_log(sink) if "n" in e)
    assert last < t1 + 0.2, f"data still arrived {last - t1:.3f}s after the cut returned"
    assert _bytes_after(sink, t1 + 0.2) == 0
    info = json.loads(daemon.cli("net", "ls", "--json").stdout)
    assert info["guests"][0]["cut"] is True
    # nothing reaches the guest either, not even from the [host] netns
    assert (
        lab.run(lab.host, "ping", "-c", "2", "-W", "1", "10.77.0.10", check=False).returncode != 0
    )
    daemon.cli("net", "restore", "web1")
    t2 = time.monotonic()
    # the stalled TCP transfer resumes by itself (its retransmission gets through)
    wait_for("the transfer to resume", lambda: _bytes_after(sink, t2) > 1 << 20, timeout=60)
    assert (
        lab.run(lab.host, "ping", "-c", "2", "-W", "2", "10.77.0.10", check=False).returncode == 0
    )
    assert t0 < t1


def _pcap_lines(path: Path, whole: bool = True) -> list[str]:
    """tcpdump's reading of a pcap file; whole=False for a file tcpdump may still be writing
    (its last record can be incomplete)."""
    r = sh("tcpdump", "-r", str(path), "-nn", "-e", "-tt", check=whole)
    return r.stdout.splitlines()


def test_capture_holds_exactly_the_exchange(daemon: DaemonProc, lab: Lab, tmp_path: Path) -> None:
    import signal
    import subprocess

    daemon.apply(net_fleet(lab.host, [net_machine("web1", [("lan0", "10.77.0.10")])]))
    wait_running(daemon, "web1")
    wait_network(daemon, "web1", "10.77.0.10")
    # neighbours learnt before the capture starts: no ARP inside the exchange
    lab.run(lab.host, "ping", "-c", "1", "-W", "2", "10.77.0.10")
    pcap = tmp_path / "web1.pcap"
    # Started as a script starts a background job: with SIGINT ignored (which `exec` keeps).
    # The capture must stop on SIGINT all the same.
    cap = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *WARDEN, "net", "capture", "web1"]
        + ["--out", str(pcap)],
        env=daemon.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cap.stderr is not None
        first = cap.stderr.readline()
        assert "capturing web1 eth0 (wt-web1-0)" in first, first
        lab.run(lab.host, "ping", "-c", "5", "-i", "0.2", "-s", "321", "10.77.0.10")
        wait_for("10 packets in the file", lambda: len(_pcap_lines(pcap)) >= 10, timeout=20)
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        try:
            cap.wait(20)
        finally:
            if cap.poll() is None:  # it did not stop: fail, but leave no process behind
                cap.kill()
                cap.wait()
            assert cap.stderr is not None
            cap.stderr.close()
    # the interrupted client took its tcpdump with it
    wait_for(
        "tcpdump to end",
        lambda: (
            not [p for p in lab.pids() if b"tcpdump" in Path(f"/proc/{p}/cmdline").read_bytes()]
        ),
        timeout=10,
    )
    lines = _pcap_lines(pcap)
    requests = [ln for ln in lines if "10.77.0.1 > 10.77.0.10: ICMP echo request" in ln]
    replies = [ln for ln in lines if "10.77.0.10 > 10.77.0.1: ICMP echo reply" in ln]
    assert len(lines) == 10, "\n".join(lines)
    assert len(requests) == 5 and len(replies) == 5
    assert all("length 329" in ln for ln in requests + replies)  # 321 + 8 bytes ICMP header
    seqs = [ln.split("seq ")[1].split(",")[0] for ln in requests]
    assert seqs == [ln.split("seq ")[1].split(",")[0] for ln in replies] and len(set(seqs)) == 5
    # tshark reads the same file the same way
    t = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "icmp.type"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(t) == ["0"] * 5 + ["8"] * 5


def test_honeypot_capture_is_always_on_from_the_first_frame_and_held_to_its_quota(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    quota = 4 << 20
    daemon.apply(
        net_fleet(lab.host, [net_machine("pot", honeypot=True)], extra='[logs]\nquota = "4M"\n')
    )
    wait_running(daemon, "pot")
    info = json.loads(daemon.cli("net", "ls", "--json").stdout)
    ip = info["guests"][0]["nics"][0]["ip"]
    wait_network(daemon, "pot", ip)
    pcaps = daemon.layout.machine("pot") / "logs" / "pcap"
    first = pcaps / "boot-0001-eth0.pcap0"
    lines = _pcap_lines(first, whole=False)
    mac = info["guests"][0]["nics"][0]["mac"]
    # the guest's very first frame is its DHCP request: the capture was on before it
    own = [ln for ln in lines if ln.split()[1] == mac]
    assert "0.0.0.0.68 > 255.255.255.255.67" in own[0], lines[:3]
    assert any(
        f"10.77.0.1.67 > {ip}.68" in ln or "10.77.0.1.67 > 255.255.255.255.68" in ln for ln in lines
    )
    assert info["guests"][0]["capture"] == ["cap:pot:0"]
    # push 5 MB through: the ring keeps the newest traffic within half the quota
    sink = tmp_path / "sink.log"
    lab.peer(lab.outside, "sink", "7001", str(sink))
    wait_for("sink", lambda: read_log(sink))
    guest_sh(
        daemon,
        "pot",
        f"dd if=/dev/zero bs=1k count=5000 2>/dev/null | nc {OUTSIDE_IP} 7001",
        timeout=60,
    )
    wait_for(
        "5 MB at the sink",
        lambda: sum(e.get("n", 0) for e in read_log(sink)) >= 5_000_000,
        timeout=60,
    )

    def fin_at_the_end() -> bool:
        # tcpdump may lag behind the wire on a busy machine: wait until it has written the end.
        # At the end of either file of the ring: the last packets (the final ACK) can be the
        # ones that start the next file, leaving the FINs at the end of the previous one.
        for p in pcaps.glob("boot-0001-eth0.pcap*"):
            tail = _pcap_lines(p, whole=False)[-20:]
            if any(f"{ip}." in ln and "Flags [F" in ln for ln in tail):
                return True
        return False

    wait_for("the transfer's FIN at the end of a capture file", fin_at_the_end, timeout=60)
    # Every packet recorded: tcpdump's own count (SIGUSR1 prints it to its log) shows no
    # frame dropped by the kernel, the transfer's burst included.
    sh("pkill", "-USR1", "-f", f"{pcaps}/boot-0001-eth0.pcap")
    stats = wait_for(
        "tcpdump's statistics",
        lambda: re.findall(
            r"(\d+) packets? dropped by kernel", (pcaps / "tcpdump.log").read_text()
        ),
    )
    assert stats[-1] == "0", (pcaps / "tcpdump.log").read_text()
    files = sorted(pcaps.glob("boot-0001-eth0.pcap*"))
    total = sum(p.stat().st_size for p in files)
    sizes = [(p.name, p.stat().st_size) for p in files]
    assert len(files) == 2 and total <= quota // 2 + 70_000, sizes
    # the ring overwrote the oldest traffic: the boot's DHCP is gone, the newest is kept
    assert not any(
        "0.0.0.0.68 > 255.255.255.255.67" in ln for p in files for ln in _pcap_lines(p, False)
    )


def _our_links(lab: Lab) -> list[str]:
    return sorted(n for n in lab.links() if n.startswith(("wb-", "wt-", "wx-")))


def _warden_chains(lab: Lab) -> set[tuple[str, str, str]]:
    return {c for c in lab.chains() if c[1] == "warden"}


def test_removing_a_guest_and_the_fleet_leaves_nothing(daemon: DaemonProc, lab: Lab) -> None:
    keep = net_machine("web1", [("lan0", "10.77.0.10")], forwards=["tcp:2022:80"])
    gone = net_machine("web2", [("lan0", "10.77.0.11")], forwards=["tcp:2023:80"], honeypot=True)
    daemon.apply(net_fleet(lab.host, [keep, gone]))
    wait_running(daemon, "web1", "web2")
    assert _our_links(lab) == ["wb-lan0", "wt-web1-0", "wt-web2-0"]
    assert ("ip", "warden", "g-web2") in _warden_chains(lab)
    daemon.cli("apply", "--prune", str(write(daemon, net_fleet(lab.host, [keep]))))
    wait_for("web2 gone", lambda: "web2" not in daemon.ls(), timeout=60)
    wait_for("web2's tap gone", lambda: _our_links(lab) == ["wb-lan0", "wt-web1-0"])
    chains = _warden_chains(lab)
    assert not {c for c in chains if "web2" in c[2]}, chains
    assert {("ip", "warden", "g-web1"), ("bridge", "warden", "p-wt-web1-0")} <= chains
    rules = json.dumps(lab.ruleset())
    assert "10.77.0.11" not in rules and "2023" not in rules and "10.77.0.10" in rules
    group = Path(f"/sys/fs/cgroup/unified/warden-{daemon.layout.instance}")
    assert not (group / "cap.web2").exists()
    dns = [p for p in lab.pids() if "dnsmasq" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(dns) == 1
    # the whole fleet goes: no tap, bridge, chain, table or dnsmasq is left in the netns
    from tests.conftest import FLEET_HEAD

    daemon.cli("apply", "--prune", str(write(daemon, FLEET_HEAD)))
    wait_for("web1 gone", lambda: daemon.ls() == {}, timeout=60)
    wait_for("the network gone", lambda: _our_links(lab) == [], timeout=30)
    wait_for("the rules gone", lambda: _warden_chains(lab) == set(), timeout=30)
    assert lab.ruleset()["nftables"][1:] == []
    wait_for("no process in the netns", lambda: lab.pids() == [], timeout=30)
    assert (
        not [g.name for g in group.iterdir() if g.name.startswith(("net.", "cap."))]
        if group.exists()
        else True
    )


def write(d: DaemonProc, text: str) -> Path:
    path = d.layout.home / f"fleet-{time.monotonic_ns()}.toml"
    path.write_text(text)
    return path


def test_guests_keep_their_network_across_a_daemon_restart(daemon: DaemonProc, lab: Lab) -> None:
    daemon.apply(
        net_fleet(
            lab.host, [net_machine("web1", [("lan0", "10.77.0.10")], forwards=["tcp:2022:80"])]
        )
    )
    wait_running(daemon, "web1")
    wait_network(daemon, "web1", "10.77.0.10")
    serve_http(daemon, "web1", 80)
    dns_before = json.loads(daemon.cli("net", "ls", "--json").stdout)["networks"][0]["dnsmasq"]
    daemon.kill9()
    # with no daemon at all the guest still serves through its forward
    assert http_get(lab, lab.outside, f"http://{HOST_IP}:2022/") == "hello-from-web1"
    daemon.start()
    info = json.loads(daemon.cli("net", "ls", "--json").stdout)
    assert info["networks"][0]["dnsmasq"] == dns_before and info["guests"][0]["wired"]
    assert http_get(lab, lab.outside, f"http://{HOST_IP}:2022/") == "hello-from-web1"
    # dnsmasq killed behind warden's back comes back
    import os
    import signal

    os.kill(dns_before, signal.SIGKILL)
    wait_for(
        "a new dnsmasq",
        lambda: (
            json.loads(daemon.cli("net", "ls", "--json").stdout)["networks"][0]["dnsmasq"]
            not in (None, dns_before)
        ),
    )
    # a stopped guest leaves no tap and no rule
    daemon.cli("stop", "web1")
    wait_for("the tap gone", lambda: _our_links(lab) == ["wb-lan0"])
    assert not {c for c in _warden_chains(lab) if "web1" in c[2]}
    assert "10.77.0.10" not in json.dumps(lab.ruleset())


def test_warden_up_makes_its_netns_and_leaves_nothing_on_exit(
    home: Layout, minimal_image: Path
) -> None:
    """`warden up` with a [host] netns that does not exist: warden makes it, and Ctrl-C (which
    stops the guests) removes every tap, bridge, rule, dnsmasq and the namespace itself."""
    import signal
    import subprocess

    from tests.support.daemon import instance_groups
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    minimal.build(ImageStore(home), NullProgress())
    ns = f"wu{os.getpid() % 100000}"
    assert not Path("/run/netns", ns).exists()
    fleet = home.home / "fleet.toml"
    fleet.write_text(net_fleet(ns, [net_machine("web1", [("lan0", "10.77.0.10")])]))
    env = {**os.environ, "WARDEN_HOME": str(home.home)}
    log = open(home.home / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([*WARDEN, "up", str(fleet)], env=env, stdout=log, stderr=log)
    d = DaemonProc(home)
    try:
        wait_for("the daemon", lambda: d.cli("status", check=False).returncode == 0, 60)
        wait_running(d, "web1")
        assert Path("/run/netns", ns).exists()
        assert sh("ip", "-n", ns, "link", "show", "wt-web1-0", check=False).returncode == 0
        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0, (home.home / "up.log").read_text()[-3000:]
        assert not Path("/run/netns", ns).exists(), (home.home / "up.log").read_text()[-3000:]
        assert instance_groups(home) == []
        assert not [
            p for p in sh("pgrep", "-a", "dnsmasq", check=False).stdout.splitlines() if ns in p
        ]
    finally:
        end_warden_up(up, log, home, ns)
