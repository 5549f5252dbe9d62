"""The pool gate on its own (no daemon, no UML): its nftables table in a real network namespace
routes each new attacker address to its own "guest" (here a namespace of servers that print
the peer address they see), in the kernel, and reports what happened.

Namespaces: the lab's HOST (the gate's), two attackers (the lab's OUTSIDE and one more, each
on a veth of its own) and GUESTS (10.66.0.50-52 on a veth, a server on port 22 of each).
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netlab import OUTSIDE_IP, wait_for
from tests.support.poollab import ATTACKER2_IP, HOST2_IP, PoolLab
from warden.forensics.pooldriver import GateClient

pytestmark = pytest.mark.guest  # root and network namespaces

GUESTS = [("g-1", "10.66.0.50"), ("g-2", "10.66.0.51"), ("g-3", "10.66.0.52")]


@pytest.fixture
def lab() -> Iterator[PoolLab]:
    with PoolLab([a for _, a in GUESTS]) as lab:
        yield lab


class Gate:
    """A GateClient driven from a synchronous test: each call runs a loop of its own."""

    def __init__(self, lab: PoolLab, log: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(GateClient(lab.host, log).start())

    def __call__(self, op: str, **args: Any) -> Any:
        return self.loop.run_until_complete(self.client.call(op, **args))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def gate(lab: PoolLab, tmp_path: Path) -> Iterator[Gate]:
    g = Gate(lab, tmp_path / "gate.log")
    g(
        "setup",
        pools=[{"name": "ssh", "listen": 22, "port": 22, "wait": 20, "guests": GUESTS}],
    )
    yield g
    g.close()
    assert "warden_pool" not in lab.run(lab.host, "nft", "list", "tables").stdout


def test_two_addresses_two_guests_a_repeat_the_same_and_the_real_source(
    lab: PoolLab, gate: Gate
) -> None:
    gate("offer", pool="ssh", warm=["g-1", "g-2"])
    first = lab.connect(lab.outside)
    assert first.startswith("SSH-2.0-10.66.0.50 sees 192.168.250.2 "), first
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.50 sees 192.168.250.2 ")
    second = lab.connect(lab.attacker2, HOST2_IP)
    assert second.startswith(f"SSH-2.0-10.66.0.51 sees {ATTACKER2_IP} "), second
    polled = gate("poll")["pools"]["ssh"]
    assert polled["claims"] == [["g-1", "192.168.250.2"], ["g-2", ATTACKER2_IP]]
    assert set(polled["seen"]) == {"192.168.250.2", ATTACKER2_IP}
    assert polled["waiting"] == []


def test_no_warm_guest_drops_the_syn_and_a_map_lets_the_retransmission_in(
    lab: PoolLab, gate: Gate
) -> None:
    # Nothing offered: the SYN is dropped (never the namespace's own port 22) and the address
    # is reported as waiting.
    assert lab.connect(lab.outside, timeout=0.5).startswith("error TimeoutError")
    assert gate("poll")["pools"]["ssh"]["waiting"] == ["192.168.250.2"]
    # The driver maps it to a guest that became warm: its next SYN gets through.
    gate("map", pool="ssh", guest="g-3", src="192.168.250.2")
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.52 sees 192.168.250.2 ")
    gate("forget", pool="ssh", src="192.168.250.2")
    assert gate("poll")["pools"]["ssh"]["waiting"] == []
    # A guest's map holds one address: a second map to it is refused.
    with pytest.raises(Exception, match="nft failed"):
        gate("map", pool="ssh", guest="g-3", src="192.0.2.1")


def test_unmap_makes_the_address_new_again_and_the_guest_free(lab: PoolLab, gate: Gate) -> None:
    gate("offer", pool="ssh", warm=["g-1"])
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.50 ")
    gate("unmap", pool="ssh", guest="g-1", src="192.168.250.2", last=True)
    gate("offer", pool="ssh", warm=["g-2"])
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.51 ")
    assert gate("poll")["pools"]["ssh"]["claims"] == [["g-2", "192.168.250.2"]]


def test_a_probe_reports_when_the_service_answers(lab: PoolLab, gate: Gate) -> None:
    gate("probe", guest="g-1", address="10.66.0.50", port=22, timeout=5)
    gate("probe", guest="g-3", address="10.66.0.99", port=22, timeout=0.5)
    probes: dict[str, Any] = {}

    def done() -> bool:
        probes.update(gate("poll")["probes"])
        return len(probes) == 2

    wait_for("both probes", done, timeout=10)
    assert isinstance(probes["g-1"], float) and probes["g-1"] < 2
    assert probes["g-3"] is None


def test_bad_requests_get_errors_and_change_nothing(gate: Gate) -> None:
    with pytest.raises(Exception, match="unknown op"):
        gate("nonsense")
    with pytest.raises(Exception, match="AddressValueError"):
        gate("map", pool="ssh", guest="g-1", src="1.2.3.4; flush ruleset")
    with pytest.raises(Exception, match="not a pool or guest name"):
        gate("offer", pool="ssh", warm=["g-1 } ; flush ruleset ; {"])
    assert gate("poll")["pools"]["ssh"]["claims"] == []


def test_any_packet_of_an_address_with_a_guest_is_activity(lab: PoolLab, gate: Gate) -> None:
    gate("offer", pool="ssh", warm=["g-1"])
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.50 ")
    wait_for("the activity to expire", lambda: gate("poll")["pools"]["ssh"]["seen"] == [], 10)
    # Not the pool's port: a connection to port 80 (refused) still says the address is there.
    assert lab.connect(lab.outside, port=80, timeout=1).startswith("error")
    assert gate("poll")["pools"]["ssh"]["seen"] == ["192.168.250.2"]
    # An address without a guest is nobody's activity.
    assert lab.connect(lab.attacker2, HOST2_IP, port=80, timeout=1).startswith("error")
    assert gate("poll")["pools"]["ssh"]["seen"] == ["192.168.250.2"]


def test_a_completed_handshake_is_reported_and_a_spoofed_syn_is_not(
    lab: PoolLab, gate: Gate
) -> None:
    lab.run(lab.host, "ip", "route", "add", "100.64.0.0/10", "via", OUTSIDE_IP)
    gate("offer", pool="ssh", warm=["g-1", "g-2"])
    # A spoofed SYN claims g-1 (the guest answers with a SYN-ACK nobody acknowledges) ...
    lab.spoof_syns(lab.outside, ["100.64.0.7"])
    wait_for("the spoofed claim", lambda: gate("poll")["pools"]["ssh"]["claims"], 5)
    # ... a real client completes its handshake with g-2.
    assert lab.connect(lab.outside).startswith("SSH-2.0-10.66.0.51 sees 192.168.250.2 ")
    polled = gate("poll")["pools"]["ssh"]
    assert polled["claims"] == [["g-1", "100.64.0.7"], ["g-2", "192.168.250.2"]]
    assert polled["handshakes"] == ["192.168.250.2"]
    # An address that loses its last guest must shake hands again for the next.
    gate("unmap", pool="ssh", guest="g-2", src="192.168.250.2", last=True)
    assert gate("poll")["pools"]["ssh"]["handshakes"] == []
