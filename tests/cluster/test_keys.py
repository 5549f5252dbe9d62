"""The values in etcd: every bad value is refused naming its key (docs/formats/cluster.md)."""

import pytest

from warden.cluster.keys import Assignment, ClusterFormatError, HostInfo, Owner, fleet_from_bytes


def test_round_trips() -> None:
    h = HostInfo("h1", 1 << 30, 1 << 29, {"zone": "a"}, 10, 42)
    assert HostInfo.from_bytes("/warden/hosts/h1", h.to_bytes()) == h
    a = Assignment("h1", 3, "failover")
    assert Assignment.from_bytes("k", a.to_bytes()) == a
    o = Owner("h1", "running", 1.5)
    assert Owner.from_bytes("k", o.to_bytes()) == o


@pytest.mark.parametrize(
    "raw, says",
    [
        (b"\xff", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"host": "h1", "rev": 1}', "lacks why"),
        (b'{"host": "H 1", "rev": 1, "why": "x"}', "host name 'H 1'"),
        (b'{"host": "h1", "rev": "x", "why": "x"}', "invalid literal"),
        (b"{" + b" " * 5000 + b"}", "more than 4096"),
    ],
)
def test_bad_assignments_are_refused(raw: bytes, says: str) -> None:
    with pytest.raises(ClusterFormatError) as e:
        Assignment.from_bytes("/warden/assign/x", raw)
    assert "/warden/assign/x" in str(e.value) and says in str(e.value)


def test_host_labels_must_be_strings() -> None:
    with pytest.raises(ClusterFormatError, match="labels must map"):
        HostInfo.from_bytes("k", b'{"name": "a", "budget": 1, "free": 1, "labels": {"z": 1}}')


def test_fleet_is_bounded() -> None:
    with pytest.raises(ClusterFormatError, match="more than"):
        fleet_from_bytes(b'{"text": "' + b"x" * (1 << 20) + b'", "source": "f"}')
