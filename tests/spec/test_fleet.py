"""The fleet file: every problem is named with its file, table, key, value and what is allowed."""

import pytest

from warden.errors import SpecError
from warden.spec import fleet

HEAD = """
[[owner]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNlLTAwMDAw a@b"]
"""


def parse(text: str) -> fleet.Fleet:
    return fleet.parse(HEAD + text, "f.toml")


def error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse(text)
    return str(e.value)


def test_example_fleet_is_valid() -> None:
    f = fleet.load("examples/fleet.toml")
    assert [m.name for m in f.machines] == ["web1", "db1", "mail1"]
    assert {m.owner for m in f.machines} == {"alice", "bob"}
    assert f.machine("web1") is not None and f.machine("web1").lines == ("con0", "ssl0")  # type: ignore[union-attr]
    assert f.concentrator.host_port == ("127.0.0.1", 2222)


def test_defaults_and_sizes() -> None:
    f = parse('[[machine]]\nname = "a"\nowner = "alice"\nmemory = "1.5G"\n')
    m = f.machines[0]
    assert m.memory == 1536 << 20
    assert m.image == "minimal" and m.kernel == "stock" and m.jail and m.autostart
    assert m.lines == ("con0",)


def test_mistyped_key_names_file_machine_key_and_hint() -> None:
    msg = error('[[machine]]\nname = "web1"\nowner = "alice"\nmemroy = "64M"\n')
    assert msg == (
        "f.toml: machine 'web1': key 'memroy' is unknown (did you mean 'memory'?); allowed: "
        + ", ".join(fleet.MACHINE_FIELDS)
    )


def test_unknown_top_level_table() -> None:
    assert "f.toml: top level: 'machines' is unknown (did you mean 'machine'?)" in error(
        '[[machines]]\nname = "a"\n'
    )


def test_bad_memory_unit() -> None:
    msg = error('[[machine]]\nname = "web1"\nowner = "alice"\nmemory = "64X"\n')
    assert "f.toml: machine 'web1': memory = '64X': expected a size such as" in msg


def test_name_used_twice() -> None:
    m = '[[machine]]\nname = "web1"\nowner = "alice"\n'
    assert "machine 'web1': name is used twice" in error(m + m)


def test_every_problem_is_reported_at_once() -> None:
    msg = error('[[machine]]\nname = "Web 1"\nowner = "carol"\nmemory = "16M"\nserial_lines = 99\n')
    lines = msg.splitlines()
    assert any("name = 'Web 1'" in x for x in lines)
    assert any("serial_lines = 99: expected a whole number from 0 to 8" in x for x in lines)


def test_unknown_owner_and_small_memory() -> None:
    msg = error('[[machine]]\nname = "a"\nowner = "carol"\nmemory = "16M"\n')
    assert "owner = 'carol' is not an [[owner]] (known: alice)" in msg
    assert "memory = 16M is too small; at least 32M" in msg


def test_floor_above_maximum_and_weight() -> None:
    msg = error(
        '[[machine]]\nname = "a"\nowner = "alice"\nmemory = "64M"\nmemory_min = "128M"\n'
        "memory_weight = 0\n"
    )
    assert "memory_min (128M) is above memory (64M)" in msg
    assert "memory_weight = 0: expected a whole number from 1 to 10000" in msg


def test_budget_below_floors() -> None:
    msg = error(
        '[host]\nmemory_budget = "100M"\n'
        '[[machine]]\nname = "a"\nowner = "alice"\nmemory = "128M"\nmemory_min = "64M"\n'
        '[[machine]]\nname = "b"\nowner = "alice"\nmemory = "128M"\nmemory_min = "64M"\n'
    )
    assert "memory_budget = 100M is below the sum of the machines' memory_min (128M)" in msg


def test_networks() -> None:
    nets = (
        '[[network]]\nname = "lan0"\nsubnet = "10.77.0.0/24"\n'
        '[[network]]\nname = "lan1"\nsubnet = "10.77.0.128/25"\n'
    )
    assert "subnet 10.77.0.128/25 overlaps network 'lan0'" in error(nets)
    ok = '[[network]]\nname = "lan0"\nsubnet = "10.77.0.0/24"\n'
    bad_ip = (
        '[[machine]]\nname = "a"\nowner = "alice"\nnics = [{ network = "lan0", ip = "10.9.0.5" }]\n'
    )
    assert "nic ip 10.9.0.5 is outside lan0's subnet 10.77.0.0/24" in error(ok + bad_ip)
    nic = 'nics = [{ network = "lan0", ip = "10.77.0.5" }]\n'
    twice = (
        '[[machine]]\nname = "a"\nowner = "alice"\n'
        + nic
        + '[[machine]]\nname = "b"\nowner = "alice"\n'
        + nic
    )
    assert "nic ip 10.77.0.5 is taken by machine 'a'" in error(ok + twice)


def test_not_toml() -> None:
    with pytest.raises(SpecError, match=r"^f.toml: not valid TOML: "):
        fleet.parse("[[machine]\nname=", "f.toml")


def test_missing_file(tmp_path: object) -> None:
    with pytest.raises(SpecError, match="no such fleet file"):
        fleet.load("/nonexistent/fleet.toml")


MACHINE_CPU = """
[[machine]]
name = "web"
owner = "alice"
cpu = {}
"""


def test_cpu_pins_a_machine_to_a_cpu_or_a_list() -> None:
    assert parse(MACHINE_CPU.format("1")).machines[0].cpu == (1,)
    assert parse(MACHINE_CPU.format("[1, 0]")).machines[0].cpu == (0, 1)
    assert parse(MACHINE_CPU.replace("cpu = {}", "")).machines[0].cpu == ()  # warden places it


@pytest.mark.parametrize("value", ["-1", '"1"', "[]", "[0, 0]", "true", "1.5", "[0, [1]]"])
def test_a_bad_cpu_value_is_refused_naming_the_key(value: str) -> None:
    msg = error(MACHINE_CPU.format(value))
    assert "f.toml: machine 'web': cpu = " in msg
    assert "expected a CPU number (cpu = 1) or a list of distinct CPU numbers" in msg
