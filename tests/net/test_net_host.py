"""The network helper on its own (no daemon): links, taps, ownership, port tests, nft errors,
processes; and a guest booted by hand with a tap fd and its address on the kernel command
line (the minimal image's fallback when there is no seed)."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netlab import Lab, wait_for
from tests.support.rawboot import RawGuest
from warden.net import names, plan, rules
from warden.net.client import AgentClient
from warden.net.errors import NetError
from warden.paths import Layout

pytestmark = pytest.mark.guest  # root and network namespaces


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[AgentClient]:
    a = AgentClient(lab.host, False, tmp_path / "agent.log").start()
    yield a
    a.close()


def bridge(agent: AgentClient) -> None:
    agent.call(
        "bridge",
        name="wb-lan0",
        alias="warden:t:net:lan0",
        mac="02:00:00:00:00:fe",
        address="10.77.0.1",
        prefix=24,
    )


def test_helper_lives_in_the_namespace_and_ends_with_its_socket(
    lab: Lab, agent: AgentClient
) -> None:
    pid = agent.hello["pid"]
    assert agent.hello["created"] is False and pid in lab.pids()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    agent.close()
    wait_for("the helper to exit", lambda: not Path(f"/proc/{pid}").exists(), 10)


def test_missing_namespace_is_not_created_when_not_asked(tmp_path: Path) -> None:
    with pytest.raises(NetError, match="network namespace 'wn-no-such' does not exist"):
        AgentClient("wn-no-such", False, tmp_path / "a.log").start()
    assert not Path("/run/netns/wn-no-such").exists()


def test_bridge_and_taps(lab: Lab, agent: AgentClient) -> None:
    bridge(agent)
    bridge(agent)  # idempotent
    links = lab.links()
    assert links["wb-lan0"]["address"] == "02:00:00:00:00:fe"
    assert "MULTICAST" not in links["wb-lan0"]["flags"]
    addrs = [a for a in agent.call("addresses") if a[0] == "wb-lan0"]
    assert addrs == [["wb-lan0", "10.77.0.1", 24]]
    _, fds = agent.call_fds("tap", name="wt-a-0", alias="warden:t:nic:a:0", bridge="wb-lan0")
    try:
        tap = lab.links()["wt-a-0"]
        assert tap["master"] == "wb-lan0" and "UP" in tap["flags"]
        # a second tap of that name is refused while the first lives
        with pytest.raises(NetError, match="tap wt-a-0 already exists"):
            agent.call("tap", name="wt-a-0", alias="x", bridge="wb-lan0")
    finally:
        os.close(fds[0])
    # the tap lives exactly as long as its fd
    wait_for("the tap to vanish", lambda: "wt-a-0" not in lab.links(), 5)
    # what is not warden's is never touched
    lab.run(lab.host, "ip", "link", "add", "wb-x", "type", "bridge")
    with pytest.raises(NetError, match="is not warden's"):
        agent.call("delete_link", name="wb-x", alias_prefix="warden:t:")
    with pytest.raises(NetError, match="already exists .* and is not warden's"):
        agent.call("bridge", name="wb-x", alias="warden:t:net:x", mac="02:00:00:00:00:fd",
                   address="10.78.0.1", prefix=24)  # fmt: skip
    assert agent.call("delete_link", name="wb-lan0", alias_prefix="warden:t:") is True
    assert agent.call("delete_link", name="wb-lan0", alias_prefix="warden:t:") is False


def test_port_test_and_nft_errors(lab: Lab, agent: AgentClient, tmp_path: Path) -> None:
    assert agent.call("port_free", proto="tcp", port=2022) == {"free": True}
    log = tmp_path / "l.log"
    lab.peer(lab.host, "accept", "2022", str(log))
    wait_for("listener", lambda: log.exists() and log.read_text())
    assert agent.call("port_free", proto="tcp", port=2022) == {"free": False}
    assert agent.call("port_free", proto="udp", port=2022) == {"free": True}
    with pytest.raises(NetError, match=r"nft failed: .*No such file or directory"):
        agent.call("nft", cmds=[{"add": {"chain": {"family": "ip", "table": "nope", "name": "c"}}}])
    # a ruleset applies, and a full rebuild without the guest leaves nothing of it
    g = plan.GuestPlan(
        "a", names.mark(1),
        (plan.NicPlan(0, "lan0", "wt-a-0", "02:00:00:00:00:01", "10.77.0.5", False),),
        (plan.ForwardPlan("tcp", 2022, "10.77.0.5", 22),), "deny",
    )  # fmt: skip
    net = plan.NetPlan("lan0", "10.77.0.0/24", True)
    agent.call("nft", cmds=rules.build("t", [net], [g], {"a"}))
    text = json.dumps(lab.ruleset())
    assert "g-a" in text and "wt-a-0" in text and "owner-t-v1" in text
    agent.call("nft", cmds=rules.build("t", [net], [], set()))
    text = json.dumps(lab.ruleset())
    assert "g-a" not in text and "wt-a-0" not in text and "10.77.0.5" not in text
    agent.call("nft", cmds=rules.remove())
    agent.call("nft", cmds=rules.remove())  # twice: absent tables are fine
    assert [c for c in lab.chains() if c[1] == "warden"] == []


def test_spawn_reports_a_process_that_does_not_start(agent: AgentClient, tmp_path: Path) -> None:
    with pytest.raises(NetError, match="did not start"):
        agent.call(
            "spawn", argv=["sh", "-c", "echo broken >&2; exit 3"], procs=[],
            log=str(tmp_path / "p.log"), ready="listening on", ready_timeout=5,
        )  # fmt: skip
    res, fds = agent.call_fds(
        "spawn", argv=["sh", "-c", "echo listening on x >&2; sleep 30"], procs=[],
        log=str(tmp_path / "p.log"), ready="listening on",
    )  # fmt: skip
    try:
        assert Path(f"/proc/{res['pid']}").exists() and len(fds) == 1
    finally:
        import signal

        signal.pidfd_send_signal(fds[0], signal.SIGKILL)
        os.close(fds[0])


def test_a_guest_booted_by_hand_takes_its_address_from_the_command_line(
    home: Layout, minimal_image: Path, lab: Lab, agent: AgentClient, tmp_path: Path
) -> None:
    bridge(agent)
    _, fds = agent.call_fds("tap", name="wt-raw-0", alias="warden:t:nic:raw:0", bridge="wb-lan0")
    fd = fds[0]
    os.set_inheritable(fd, True)
    nic = plan.NicPlan(0, "lan0", "wt-raw-0", "02:00:00:00:00:33", "10.77.0.33", False)
    guest = RawGuest(
        home, minimal_image, tmp_path / "raw.cow", pass_fds=(fd,),
        extra=(plan.kernel_arg(nic, fd), "warden.ip=10.77.0.33/24", "warden.gw=10.77.0.1"),
    )  # fmt: skip
    try:
        guest.start()
        os.close(fd)  # the kernel holds the tap now
        guest.expect(b"is up", 120)
        guest.wait_prompt()
        out = guest.run("ip -4 addr show eth0; ip route")
        assert "inet 10.77.0.33/24" in out and "default via 10.77.0.1" in out
        assert "02:00:00:00:00:33" in guest.run("cat /sys/class/net/eth0/address")
        assert lab.run(lab.host, "ping", "-c", "2", "-W", "2", "10.77.0.33").returncode == 0
        # warden's networks are IPv4 only: the image switches IPv6 off before eth0 comes up
        # (the stock kernel has IPv6 as a module, which the minimal image does not load)
        v6 = guest.run("cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null || echo absent")
        assert v6.strip().splitlines()[-1] in ("1", "absent")
    finally:
        guest.close()
    wait_for("the tap to vanish with the kernel", lambda: "wt-raw-0" not in lab.links(), 10)
