"""One host's claims and releases, with scripted owner records and times."""

from warden.cluster.hostplan import Claim, HostMemory, Release, plan


def test_claims_only_after_the_record_was_absent_for_the_grace_period() -> None:
    mem = HostMemory()
    assert plan("b", {"x"}, {}, mem, now=100.0, grace=2.0) == []
    assert plan("b", {"x"}, {}, mem, now=101.9, grace=2.0) == []
    assert plan("b", {"x"}, {}, mem, now=102.0, grace=2.0) == [Claim("x")]


def test_waits_while_another_host_owns_it_and_the_grace_restarts_after() -> None:
    mem = HostMemory()
    assert plan("b", {"x"}, {}, mem, now=100.0) == []
    # the old owner's record is seen again (a slow read): the wait starts over
    assert plan("b", {"x"}, {"x": "a"}, mem, now=101.0) == []
    assert plan("b", {"x"}, {}, mem, now=102.5) == []
    assert plan("b", {"x"}, {}, mem, now=104.4) == []
    assert plan("b", {"x"}, {}, mem, now=104.5) == [Claim("x")]


def test_releases_what_it_owns_but_is_assigned_elsewhere() -> None:
    mem = HostMemory()
    assert plan("a", {"y"}, {"x": "a", "y": "a", "z": "c"}, mem, now=1.0) == [Release("x")]


def test_owned_and_assigned_needs_nothing() -> None:
    assert plan("a", {"x"}, {"x": "a"}, HostMemory(), now=1.0) == []
