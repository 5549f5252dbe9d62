"""[[pool]] tables (docs/formats/fleet.md): the guests they add, and errors naming the field."""

import pytest

from warden.errors import SpecError
from warden.spec import fleet

HEAD = """
[host]
netns = "pots"

[[owner]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNlLTAwMDAw a@b"]

[[network]]
name = "dmz"
subnet = "10.77.0.0/24"
"""
POOL = """
[[pool]]
name = "ssh"
owner = "alice"
network = "dmz"
addresses = ["10.77.0.50", "10.77.0.51", "10.77.0.52"]
"""


def parse(text: str) -> fleet.Fleet:
    return fleet.parse(HEAD + text, "f.toml")


def error(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse(text)
    return str(e.value)


def test_a_pool_adds_one_machine_per_address_with_the_template() -> None:
    f = parse(POOL + 'size = 2\nidle = "90s"\nmemory = "96M"\negress = "deny"\nport = 2222\n')
    (pool,) = f.pools
    assert pool.size == 2 and pool.idle == 90 and pool.wait == 20
    assert pool.listen == 22 and pool.guest_port == 2222
    assert [m.name for m in f.machines] == ["ssh-1", "ssh-2", "ssh-3"]
    m = f.machine("ssh-3")
    assert m is not None
    assert m.nics == (fleet.Nic("dmz", "10.77.0.52"),)
    assert m.memory == 96 << 20 and m.egress == "deny" and m.owner == "alice"
    assert not m.autostart and m.restart == "no" and m.recycle == ""


def test_defaults() -> None:
    (pool,) = parse(POOL).pools
    assert (pool.size, pool.listen, pool.guest_port, pool.idle, pool.wait) == (1, 22, 22, 600, 20)
    assert pool.claim_timeout == 5


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("size = 4\n", "pool 'ssh': size = 4 is more than the 3 addresses"),
        ('listen = "udp:22"\n', "pool 'ssh': listen = 'udp:22': expected \"tcp:PORT\""),
        ('listen = "tcp:0"\n', "listen = 'tcp:0': expected \"tcp:PORT\" with a port from 1"),
        ('idle = "5s"\n', "pool 'ssh': idle = '5s': expected a duration from 10s"),
        ('idle = "ten"\n', "idle = 'ten': duration 'ten': expected whole numbers"),
        ('wait = "3m"\n', "wait = '3m': expected a duration from 0s to 120s"),
        ('claim_timeout = "0s"\n', "claim_timeout = '0s': expected a duration from 1s to 60s"),
        ('forwards = ["tcp:22:22"]\n', "pool 'ssh': key 'forwards' is not allowed in a pool"),
        ('restart = "always"\n', "key 'restart' is not allowed in a pool"),
        ('memroy = "64M"\n', "key 'memroy' is unknown (did you mean 'memory'?)"),
        ('memory = "8M"\n', "pool 'ssh': memory = 8M is too small"),
        ("tty_log = true\n", "tty_log and disguise need the honeypot kernel"),
    ],
)
def test_bad_fields_are_named(extra: str, expected: str) -> None:
    assert expected in error(POOL + extra)


def test_addresses_are_checked() -> None:
    bad = POOL.replace('"10.77.0.52"', '"10.77.1.9"')
    assert "pool 'ssh': nic ip 10.77.1.9 is outside dmz's subnet 10.77.0.0/24" in error(bad)
    twice = POOL.replace('"10.77.0.52"', '"10.77.0.50"')
    assert "addresses = [" in error(twice) and "an address is listed twice" in error(twice)
    gw = POOL.replace('"10.77.0.52"', '"10.77.0.1"')
    assert "nic ip 10.77.0.1 is reserved" in error(gw)
    assert "expected 1 to 64 IPv4 addresses" in error(
        POOL.replace('["10.77.0.50", "10.77.0.51", "10.77.0.52"]', "[]")
    )


def test_missing_keys_and_unknown_network() -> None:
    assert "pool #1: key 'name' is required" in error('[[pool]]\nowner = "alice"\n')
    e = error(POOL.replace('network = "dmz"', 'network = "lan"'))
    assert "pool 'ssh': network = 'lan' is not a [[network]] (known: dmz)" in e
    e = error(POOL.replace('owner = "alice"', 'owner = "eve"'))
    assert "owner = 'eve' is not an [[owner]]" in e


def test_clashes_with_machines_and_other_pools() -> None:
    machine = (
        '[[machine]]\nname = "ssh-2"\nowner = "alice"\n'
        'nics = [{ network = "dmz", ip = "10.77.0.51" }]\n'
        'forwards = ["tcp:22:22"]\n'
    )
    e = error(machine + POOL)
    assert "pool 'ssh': its guest 'ssh-2' has the name of a [[machine]]" in e
    assert "nic ip 10.77.0.51 is taken by machine 'ssh-2'" in e
    assert "listen = \"tcp:22\": the port is 'ssh-2''s forward" in e
    other = POOL.replace('"ssh"', '"web"').replace("10.77.0.5", "10.77.0.6")
    assert "pool 'web': listen = \"tcp:22\" is pool 'ssh''s too" in error(POOL + other)
    assert "pool 'ssh': name is used twice" in error(POOL + POOL.replace("10.77.0.5", "10.77.0.7"))


def test_a_pool_needs_a_namespace_of_its_own() -> None:
    text = HEAD.replace('[host]\nnetns = "pots"\n', "") + POOL
    with pytest.raises(SpecError) as e:
        fleet.parse(text, "f.toml")
    assert 'f.toml: [host]: a [[pool]] needs netns = "NAME"' in str(e.value)
