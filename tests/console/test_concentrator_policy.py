"""The concentrator's policy without sockets (warden.console.access)."""

from warden.console import access
from warden.spec import fleet

FLEET = fleet.parse(
    """
[[owner]]
name = "alice"
[[owner]]
name = "bob"
[[owner]]
name = "root"
admin = true
[[machine]]
name = "web1"
owner = "alice"
serial_lines = 1
[[machine]]
name = "db1"
owner = "bob"
"""
)


def test_parse_command() -> None:
    assert access.parse_command(None) == access.ListGuests()
    assert access.parse_command("") == access.ListGuests()
    assert access.parse_command("list") == access.ListGuests()
    assert access.parse_command("help") == access.Help()
    assert access.parse_command("web1") == access.Attach("web1", "con0")
    assert access.parse_command("web1:ssl0 --spy") == access.Attach("web1", "ssl0", spy=True)
    assert access.parse_command("web1 -f") == access.Attach("web1", "con0", force=True)
    assert access.parse_command("web1 --scrollback 500") == access.Attach(
        "web1", "con0", scrollback=500
    )
    for cmd in ("cat /etc/passwd", "/bin/sh", "sh -c id", "web1; id", "../x"):
        r = access.parse_command(cmd)
        assert isinstance(r, access.Refuse) and "no shell and no host commands" in r.message, cmd
    for cmd in ("scp -t /tmp", "rsync --server .", "sftp", "/usr/lib/openssh/sftp-server"):
        r = access.parse_command(cmd)
        assert isinstance(r, access.Refuse) and "file transfer" in r.message, cmd
    r = access.parse_command("web1:tty9")
    assert isinstance(r, access.Refuse) and "not a line name" in r.message
    r = access.parse_command("web1 --spy --force")
    assert isinstance(r, access.Refuse) and "do not go together" in r.message
    r = access.parse_command("web1 --bogus")
    assert isinstance(r, access.Refuse) and r.status == 2 and "--bogus" in r.message


def test_reach_and_same_answer_for_others_and_missing() -> None:
    assert [m.name for m in access.reachable(FLEET, "alice")] == ["web1"]
    assert [m.name for m in access.reachable(FLEET, "root")] == ["web1", "db1"]
    assert access.reachable(FLEET, "mallory") == []
    theirs = access.resolve(FLEET, "alice", access.Attach("db1", "con0"))
    missing = access.resolve(FLEET, "alice", access.Attach("zz1", "con0"))
    assert isinstance(theirs, access.Refuse) and isinstance(missing, access.Refuse)
    assert theirs.message.replace("db1", "X") == missing.message.replace("zz1", "X")
    # Even the line check comes after the access check: no probing of others' lines.
    probe = access.resolve(FLEET, "alice", access.Attach("db1", "ssl5"))
    assert isinstance(probe, access.Refuse) and probe.message == theirs.message
    ok = access.resolve(FLEET, "root", access.Attach("db1", "con0"))
    assert not isinstance(ok, access.Refuse) and ok.name == "db1"
    noline = access.resolve(FLEET, "alice", access.Attach("web1", "ssl3"))
    assert isinstance(noline, access.Refuse) and "con0, ssl0" in noline.message


def test_escape_filter() -> None:
    f = access.EscapeFilter()
    assert f.feed(b"ls\r") == [("data", b"ls\r")]
    assert f.feed(b"a\x1d.b") == [("data", b"a"), ("detach", b"")]
    f = access.EscapeFilter()
    assert f.feed(b"x\x1d") == [("data", b"x")]  # the escape may end a chunk...
    assert f.feed(b".") == [("detach", b"")]  # ...and finish in the next
    f = access.EscapeFilter()
    assert f.feed(b"\x1d\x1d") == [("data", b"\x1d")]
    assert f.feed(b"\x1dq") == [("data", b"\x1dq")]
    assert f.feed(b"1\x1d?2") == [("data", b"1"), ("help", b""), ("data", b"2")]
