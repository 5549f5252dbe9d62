"""The web console's login, session, CSRF and Origin rules (warden.web.auth), with made-up
clocks, and what a principal may see (warden.web.view)."""

import pytest

from warden.errors import NotFound, SpecError
from warden.spec import fleet
from warden.web import auth, view

HASH = "$6$saltsalt$" + "a" * 86
FLEET = f"""
[[owner]]
name = "alice"
password_hash = "{HASH}"

[[owner]]
name = "bob"

[[owner]]
name = "ops"
admin = true

[[machine]]
name = "web1"
owner = "alice"

[[machine]]
name = "db1"
owner = "bob"
"""


NO_BOB = FLEET.replace('[[owner]]\nname = "bob"\n', "").replace(
    '[[machine]]\nname = "db1"\nowner = "bob"\n', ""
)


def parse(text: str = FLEET) -> fleet.Fleet:
    return fleet.parse(text, "f.toml")


ALICE = auth.Principal("alice")


# ---- principals ---------------------------------------------------------------------------
def test_whom_a_link_logs_in() -> None:
    f = parse()
    assert auth.for_link(f, "alice", False, "root") == auth.Principal("alice", False, "link")
    assert auth.for_link(f, "ops", False, "root").admin  # an admin owner is an admin anyway
    assert auth.for_link(f, "ops", True, "root") == auth.Principal("ops", True, "link")
    assert auth.for_link(f, None, True, "root") == auth.Principal("root", True, "host")
    with pytest.raises(SpecError, match="alice is not an administrator in the fleet"):
        auth.for_link(f, "alice", True, "root")
    with pytest.raises(NotFound, match=r"no owner named 'carol' in the fleet f.toml \(owners: "):
        auth.for_link(f, "carol", False, "root")
    with pytest.raises(SpecError, match="name an owner"):
        auth.for_link(f, None, False, "root")


def test_a_fleet_change_revokes_what_it_removes() -> None:
    f = parse()
    assert auth.still_valid(f, ALICE) is None
    assert auth.still_valid(f, auth.Principal("root", True, "host")) is None
    gone = parse(FLEET.replace('name = "alice"', 'name = "alicia"').replace('"alice"', '"bob"'))
    assert auth.still_valid(gone, ALICE) == "the owner alice was removed from the fleet"
    demoted = parse(FLEET.replace("admin = true", "admin = false"))
    assert (
        auth.still_valid(demoted, auth.Principal("ops", True))
        == "ops is no longer an administrator"
    )
    pw = auth.Principal("alice", via="password", credential=HASH)
    assert auth.still_valid(f, pw) is None
    changed = parse(FLEET.replace(HASH, "$6$saltsalt$" + "b" * 86))
    assert auth.still_valid(changed, pw) == "the password alice logged in with was changed"
    assert auth.still_valid(changed, ALICE) is None  # a link's session keeps its owner


# ---- login links --------------------------------------------------------------------------
def test_a_link_is_spent_once_and_expires() -> None:
    links = auth.LoginLinks()
    token = links.issue(ALICE, 900, now=100.0)
    assert len(token) >= 43  # 256 bits, URL-safe base64
    assert links.redeem(token, now=200.0) == ALICE
    assert links.redeem(token, now=201.0) is None  # spent
    late = links.issue(ALICE, 900, now=100.0)
    assert links.redeem(late, now=1000.0) is None  # expired
    assert links.redeem("", 0) is None and links.redeem("x" * 500, 0) is None
    assert links.redeem("é" * 10, 0) is None
    with pytest.raises(SpecError, match="ttl 0s"):
        links.issue(ALICE, 0, 0)
    with pytest.raises(SpecError, match="at most 86400s"):
        links.issue(ALICE, 86401, 0)


def test_pending_links_are_bounded_and_revoked_with_their_owner() -> None:
    links = auth.LoginLinks(max_links=3)
    first = links.issue(ALICE, 10, now=0)
    for _ in range(3):
        links.issue(auth.Principal("bob"), 100, now=0)
    assert len(links) == 3 and links.redeem(first, 1) is None  # the soonest to expire went
    bobs = links.issue(auth.Principal("bob"), 100, now=0)
    assert links.revoke(parse(NO_BOB)) >= 1
    assert links.redeem(bobs, 1) is None


# ---- sessions -----------------------------------------------------------------------------
def test_sessions_end_when_idle_or_old() -> None:
    ss = auth.Sessions(idle=60, lifetime=3600)
    cookie, s = ss.open(ALICE, now=0, source="127.0.0.1:5")
    assert ss.get(cookie, 59) is s
    ss.touch(s, 59)
    assert ss.get(cookie, 118) is s  # 59 s after the last request
    assert ss.get(cookie, 119) is None and len(ss) == 0  # idle: forgotten
    cookie, s = ss.open(ALICE, now=0, source="x")
    for t in range(0, 3600, 30):
        ss.touch(s, t)
    assert ss.get(cookie, 3599) is s and ss.get(cookie, 3600) is None  # the lifetime
    assert ss.get(None, 0) is None and ss.get("nonsense", 0) is None


def test_sessions_are_bounded_and_keyed_by_digest() -> None:
    ss = auth.Sessions(idle=60, max_sessions=2)
    c1, s1 = ss.open(ALICE, 0, "a")
    c2, s2 = ss.open(ALICE, 1, "b")
    c3, s3 = ss.open(ALICE, 2, "c")
    assert ss.get(c1, 3) is None and ss.get(c2, 3) is s2 and ss.get(c3, 3) is s3
    assert c2.encode() not in s2.key and len(s2.key) == 32  # only the digest is kept
    assert s2.csrf != s3.csrf and auth.csrf_ok(s2, s2.csrf)
    assert not auth.csrf_ok(s2, s3.csrf) and not auth.csrf_ok(s2, None)
    ss.close(s2)
    assert ss.get(c2, 3) is None and not ss.alive(s2, 3)


def test_revoke_closes_sessions_the_fleet_no_longer_allows() -> None:
    ss = auth.Sessions(idle=60)
    _, alice = ss.open(ALICE, 0, "a")
    _, bob = ss.open(auth.Principal("bob"), 0, "b")
    out = ss.revoke(parse(NO_BOB))
    assert [(s.user, why) for s, why in out] == [
        ("bob", "the owner bob was removed from the fleet")
    ]
    assert ss.alive(alice, 1) and not ss.alive(bob, 1)


# ---- Origin -------------------------------------------------------------------------------
def test_origins_are_compared_normalised() -> None:
    assert auth.origin("https://Warden.Example") == "https://warden.example:443"
    assert auth.origin("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert auth.origin("https://[::1]:8443") == "https://[::1]:8443"
    for bad in ("null", "", "file:///x", "https://h/path", "https://u@h", "https://h:99999"):
        assert auth.origin(bad) is None, bad


def test_origin_must_be_the_servers_own() -> None:
    ok = auth.origin_ok
    assert ok("https://127.0.0.1:8443", "127.0.0.1:8443", "https")
    assert ok("https://localhost:9000", "localhost:9000", "https")  # an ssh -L tunnel
    assert not ok("https://evil.example", "127.0.0.1:8443", "https")
    assert not ok("http://127.0.0.1:8443", "127.0.0.1:8443", "https")  # scheme
    assert not ok("https://127.0.0.1:8444", "127.0.0.1:8443", "https")  # port
    assert not ok(None, "127.0.0.1:8443", "https") and not ok("null", "h", "https")
    assert ok("https://w.example", "10.0.0.1:443", "https", ["https://w.example"])
    assert auth.cookie_name(True) == "__Host-warden" and auth.cookie_name(False) == "warden"


# ---- what a principal sees ----------------------------------------------------------------
def test_owners_see_their_guests_and_admins_all() -> None:
    f = parse()
    assert [m.name for m in view.visible(f, ALICE)] == ["web1"]
    assert [m.name for m in view.visible(f, auth.Principal("ops", True))] == ["web1", "db1"]
    assert view.may_see(f, ALICE, "web1") and not view.may_see(f, ALICE, "db1")
    assert not view.may_see(f, ALICE, "nope")
    assert view.may_receive(f, ALICE, {"machine": "web1", "kind": "up"})
    assert not view.may_receive(f, ALICE, {"machine": "db1", "kind": "up"})
    assert not view.may_receive(f, ALICE, {"machine": None, "kind": "fleet-applied"})
    assert view.may_receive(f, auth.Principal("ops", True), {"machine": None, "kind": "x"})


def test_other_guests_names_are_redacted_from_the_daemons_words() -> None:
    f = parse()
    msg = "cannot start web1: floors of the guests already running (64M: db1 64M, db1-x 8M)"
    hide = view.hidden(f, ALICE)
    assert hide == ["db1"]
    assert view.redact(msg, hide) == (
        "cannot start web1: floors of the guests already running (64M: another guest 64M, db1-x 8M)"
    )
    ev = {"machine": "web1", "kind": "refused", "why": ["db1", {"db1": "db1 up"}]}
    assert view.redact(ev, hide) == {
        "machine": "web1",
        "kind": "refused",
        "why": ["another guest", {"another guest": "another guest up"}],
    }
    assert view.redact(msg, view.hidden(f, auth.Principal("ops", True))) == msg


def test_rows_offer_the_actions_the_state_allows() -> None:
    f = parse()
    spec = f.machines[0]
    row = view.guest_row(
        spec,
        {"state": "running", "uptime": 5.0, "boot": 2},
        {"plugged": 64 << 20, "used": 9 << 20},
        3,
    )
    assert row["actions"] == ["stop", "kill"] and row["sessions"] == 3
    assert row["plugged"] == 64 << 20 and row["used"] == 9 << 20
    assert view.guest_row(spec, None, None, 0)["actions"] == ["start"]
    assert view.actions_for("stopped") == ["start", "reset"]
