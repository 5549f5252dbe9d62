"""Networking's pure parts: names, addresses, marks, the ruleset, dnsmasq and tcpdump command
lines, the capture quota and the pcap record boundary. No root, no guest."""

import struct
from pathlib import Path

import pytest

from warden.net import capture, dnsmasq, names, plan, rules
from warden.net import state as statemod
from warden.net.errors import NetError
from warden.spec import fleet

HEAD = """
[[owner]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNlLTAwMDAw a@b"]
[[network]]
name = "lan0"
subnet = "10.77.0.0/29"
nat = true
"""


def machine(name: str, nics: str = '{ network = "lan0" }', **extra: str) -> str:
    rest = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return f'[[machine]]\nname = "{name}"\nowner = "alice"\nnics = [{nics}]\n{rest}'


def parse(*machines: str) -> fleet.Fleet:
    return fleet.parse(HEAD + "".join(machines), "f.toml")


def test_interface_names_fit_ifnamsiz() -> None:
    assert names.bridge("lan0") == "wb-lan0"
    assert len(names.bridge("a" * 11)) <= 15
    assert names.tap("web1", 0) == "wt-web1-0"
    long = names.tap("a-very-long-machine-name", 3)
    assert len(long) <= 15 and long.startswith("wx-") and long.endswith("-3")
    assert names.tap("a-very-long-machine-name", 3) != names.tap("a-very-long-machine-nam", 3)


def test_macs_are_stable_unicast_and_local() -> None:
    a = names.mac("abcd1234", "web1", 0)
    assert a == names.mac("abcd1234", "web1", 0)
    assert a != names.mac("abcd1234", "web1", 1) != names.mac("ffff0000", "web1", 0)
    first = int(a.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered
    assert len(a.split(":")) == 6


def test_static_addresses_win_and_dhcp_gets_the_lowest_free() -> None:
    f = parse(machine("a"), machine("b", '{ network = "lan0", ip = "10.77.0.2" }'), machine("c"))
    got = plan.allocate(f, {})
    assert got == {"a": ["10.77.0.3"], "b": ["10.77.0.2"], "c": ["10.77.0.4"]}


def test_chosen_addresses_are_kept_across_changes() -> None:
    f = parse(machine("a"), machine("c"))
    first = plan.allocate(f, {})
    assert first == {"a": ["10.77.0.2"], "c": ["10.77.0.3"]}
    # a new machine before them in the file does not move them
    f2 = parse(machine("new"), machine("a"), machine("c"))
    assert plan.allocate(f2, first) == {
        "new": ["10.77.0.4"],
        "a": ["10.77.0.2"],
        "c": ["10.77.0.3"],
    }
    # a static address taking a chosen one moves the chosen one, not the static one
    f3 = parse(machine("a"), machine("c", '{ network = "lan0", ip = "10.77.0.2" }'))
    assert plan.allocate(f3, first) == {"a": ["10.77.0.3"], "c": ["10.77.0.2"]}


def test_a_full_subnet_is_an_error_naming_it() -> None:
    # /29: .1 is the host, .7 broadcast: five guests fit, the sixth does not
    f = parse(*(machine(f"m{i}") for i in range(6)))
    with pytest.raises(
        NetError, match=r"'lan0' \(10.77.0.0/29\) has no free address left for machine 'm5'"
    ):
        plan.allocate(f, {})


def test_marks_are_kept_and_reused() -> None:
    f = parse(machine("a"), machine("b"))
    marks = plan.assign_marks(f, {})
    assert marks == {"a": 1, "b": 2}
    f2 = parse(machine("b"), machine("c"))
    assert plan.assign_marks(f2, marks) == {"b": 2, "c": 1}
    assert names.mark(1) == 0x57000001
    with pytest.raises(ValueError):
        names.mark(0)


def guest_plan(
    egress: str = "allow", forwards: str = '["tcp:2022:22", "udp:5353:53"]'
) -> plan.GuestPlan:
    f = parse(
        machine(
            "web1",
            '{ network = "lan0", ip = "10.77.0.5" }',
            egress=f'"{egress}"',
            forwards=forwards,
        )
    )
    return plan.guest("abcd1234", f.machines[0], ["10.77.0.5"], 7)


def test_guest_plan_and_seed() -> None:
    g = guest_plan()
    assert g.mark == names.MARK_BASE | 7
    assert g.nics[0].tap == "wt-web1-0" and not g.nics[0].dhcp
    assert [(x.proto, x.host_port, x.guest_ip, x.guest_port) for x in g.forwards] == [
        ("tcp", 2022, "10.77.0.5", 22),
        ("udp", 5353, "10.77.0.5", 53),
    ]
    nets = {"lan0": plan.NetPlan("lan0", "10.77.0.0/29", True)}
    assert plan.seed_network(g, nets) == {
        "WARDEN_IP": "10.77.0.5/29",
        "WARDEN_GATEWAY": "10.77.0.1",
        "WARDEN_DNS": "10.77.0.1",
    }
    assert plan.kernel_arg(g.nics[0], 9) == f"vec0:transport=fd,fd=9,vec=0,mac={g.nics[0].mac}"
    # a DHCP NIC leaves everything to DHCP; a second NIC gets WARDEN_IP_1
    f = parse(machine("d", '{ network = "lan0" }, { network = "lan0", ip = "10.77.0.6" }'))
    d = plan.guest("abcd1234", f.machines[0], ["10.77.0.2", "10.77.0.6"], 1)
    assert plan.seed_network(d, nets) == {
        "WARDEN_IP": "",
        "WARDEN_GATEWAY": "",
        "WARDEN_DNS": "",
        "WARDEN_IP_1": "10.77.0.6/29",
    }


def test_state_round_trip(tmp_path: Path) -> None:
    g = guest_plan("5/second")
    st = statemod.State(live={"web1": statemod.guest_to_json(g)}, cut=["web1"], marks={"web1": 7})
    statemod.save(tmp_path / "s.json", st)
    back = statemod.load(tmp_path / "s.json")
    assert back.live_guests() == [g] and back.cut == ["web1"] and back.marks == {"web1": 7}
    (tmp_path / "s.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="version 99"):
        statemod.load(tmp_path / "s.json")
    assert statemod.load(tmp_path / "missing.json") == statemod.State()


def _chains(cmds: list[dict], family: str) -> list[str]:
    return [
        c["add"]["chain"]["name"]
        for c in cmds
        if "chain" in c.get("add", {}) and c["add"]["chain"]["family"] == family
    ]


def _rules(cmds: list[dict], family: str, chain: str) -> list[list[dict]]:
    return [
        c["add"]["rule"]["expr"]
        for c in cmds
        if "rule" in c.get("add", {})
        and c["add"]["rule"]["family"] == family
        and c["add"]["rule"]["chain"] == chain
    ]


def _elements(cmds: list[dict], family: str, name: str) -> list[object]:
    out: list[object] = []
    for c in cmds:
        e = c.get("add", {}).get("element")
        if e and e["family"] == family and e["name"] == name:
            out += e["elem"]
    return out


def test_ruleset_starts_by_replacing_both_tables() -> None:
    cmds = rules.build("abcd1234", [], [], set())
    heads = [
        (k, next(iter(v)), v[next(iter(v))].get("family"))
        for c in cmds
        for k, v in c.items()
        if "table" in v
    ]
    assert heads == [
        ("add", "table", "bridge"),
        ("delete", "table", "bridge"),
        ("add", "table", "bridge"),
        ("add", "table", "ip"),
        ("delete", "table", "ip"),
        ("add", "table", "ip"),
    ]
    assert "owner-abcd1234-v1" in _chains(cmds, "ip") and "owner-abcd1234-v1" in _chains(
        cmds, "bridge"
    )


def test_ruleset_has_one_chain_per_guest_and_nothing_of_a_gone_guest() -> None:
    net = plan.NetPlan("lan0", "10.77.0.0/29", True)
    g = guest_plan("deny")
    with_g = rules.build("abcd1234", [net], [g], set())
    assert "g-web1" in _chains(with_g, "ip") and "p-wt-web1-0" in _chains(with_g, "bridge")
    assert _elements(with_g, "ip", "egress") == [[g.mark, {"jump": {"target": "g-web1"}}]]
    assert _elements(with_g, "bridge", "ports") == [
        ["wt-web1-0", {"jump": {"target": "p-wt-web1-0"}}]
    ]
    dnats = [r[-1]["dnat"] for r in _rules(with_g, "ip", "forwards")]
    assert dnats == [{"addr": "10.77.0.5", "port": 22}, {"addr": "10.77.0.5", "port": 53}]
    without = rules.build("abcd1234", [net], [], set())
    text = repr(without)
    assert "web1" not in text and "10.77.0.5" not in text
    assert _elements(without, "ip", "nat_src") == [{"prefix": {"addr": "10.77.0.0", "len": 29}}]


def test_egress_policies() -> None:
    allow = _rules(rules.build("x", [], [guest_plan("allow")], set()), "ip", "g-web1")
    assert allow == [[{"accept": None}]]
    deny = _rules(rules.build("x", [], [guest_plan("deny")], set()), "ip", "g-web1")
    assert deny == [[{"counter": None}, {"drop": None}]]
    rate = _rules(rules.build("x", [], [guest_plan("20/minute")], set()), "ip", "g-web1")
    assert rate[0][1] == {"limit": {"rate": 20, "per": "minute", "burst": 5}}
    assert rate[0][0]["match"]["right"] == "new" and rate[1] == [{"counter": None}, {"drop": None}]


def test_cut_is_a_set_element_kept_in_rebuilds() -> None:
    g = guest_plan()
    assert _elements(rules.build("x", [], [g], {"web1"}), "bridge", "cut") == ["wt-web1-0"]
    assert _elements(rules.build("x", [], [g], set()), "bridge", "cut") == []
    assert rules.cut_element("add", ("wt-web1-0",))[0]["add"]["element"]["elem"] == ["wt-web1-0"]
    assert rules.cut_element("delete", ()) == []


def test_dnsmasq_command_line() -> None:
    net = plan.NetPlan("lan0", "10.77.0.0/24", False)
    argv = dnsmasq.argv(
        "/usr/sbin/dnsmasq",
        net,
        [dnsmasq.Host("02:00:00:00:00:02", "10.77.0.9", "web2")],
        upstream=False,
    )
    assert argv[0] == "/usr/sbin/dnsmasq"
    for want in (
        "--interface=wb-lan0",
        "--dhcp-range=10.77.0.0,static,255.255.255.0,infinite",
        "--dhcp-option=option:router,10.77.0.1",
        "--dhcp-host=02:00:00:00:00:02,10.77.0.9,web2,infinite",
        "--host-record=web2,10.77.0.9",
        "--no-resolv",
        "--conf-file=/dev/null",
    ):
        assert want in argv
    assert "--no-resolv" not in dnsmasq.argv("d", plan.NetPlan("n", "10.0.0.0/24", True), [], True)


def test_capture_ring_stays_within_half_the_quota() -> None:
    for quota in (2 << 20, 4 << 20, 64 << 20, 1 << 30):
        for nics in (1, 2, 3):
            size, count = capture.ring(quota, nics)
            assert size >= 1 and count >= 1
            assert size * capture.MB * count * nics <= max(quota // 2, capture.MB * nics)
    assert capture.ring(64 << 20, 1) == (4, 8)
    argv = capture.tcpdump_argv("tcpdump", "wt-a-0", "/x/boot-0001-eth0.pcap", ring_size=(4, 8))
    assert argv[-2:] == ["-w", "/x/boot-0001-eth0.pcap"] and ["-C", "4", "-W", "8"] == argv[-6:-2]
    assert "-U" in argv and "-c" not in argv
    assert capture.tcpdump_argv("t", "i", "-", count=3)[-4:] == ["-c", "3", "-w", "-"]


def test_prune_removes_oldest_earlier_boots_first(tmp_path: Path) -> None:
    import os

    sizes = {
        "boot-0001-eth0.pcap0": 400,
        "boot-0001-eth0.pcap1": 400,
        "boot-0002-eth0.pcap0": 300,
        "boot-0003-eth0.pcap0": 999,
    }
    for i, (name, size) in enumerate(sizes.items()):
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        os.utime(p, ns=(i * 10**9, i * 10**9))
    (tmp_path / "tcpdump.log").write_text("not a capture")
    removed = capture.prune(tmp_path, keep_bytes=500, before_boot=3)
    assert [p.name for p in removed] == ["boot-0001-eth0.pcap0", "boot-0001-eth0.pcap1"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["boot-0002-eth0.pcap0", "boot-0003-eth0.pcap0", "tcpdump.log"]


def _pcap(n: int, little: bool = True) -> bytes:
    e = "<" if little else ">"
    out = struct.pack(e + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i in range(n):
        frame = bytes([i]) * (60 + i)
        out += struct.pack(e + "IIII", 1, i, len(frame), len(frame)) + frame
    return out


@pytest.mark.parametrize("little", [True, False])
def test_record_boundary_in_any_chunking(little: bool) -> None:
    data = _pcap(5, little)
    whole = [24 + sum(16 + 60 + i for i in range(k)) for k in range(6)]
    for step in (1, 7, 16, 100, len(data)):
        b = capture.RecordBoundary()
        for pos in range(0, len(data), step):
            b.feed(data[pos : pos + step])
            seen = pos + len(data[pos : pos + step])
            assert (
                b.complete == max(w for w in whole if w <= seen) if seen >= 24 else b.complete == 0
            )
        assert b.complete == len(data)
    cut = capture.RecordBoundary()
    cut.feed(data[:-3])
    assert cut.complete == whole[4]
    with pytest.raises(ValueError, match="not a pcap"):
        capture.RecordBoundary().feed(b"\x00" * 24)
