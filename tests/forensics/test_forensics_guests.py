"""Issue 16, parts 1-3 on real guests (the "Done when" of timeline, evidence and recycle).

- An intruder logs into a Debian honeypot (honeypot kernel, tty log, captures) with OpenSSH
  from another network namespace, writes a file and opens a connection to a host outside:
  `warden timeline` shows the login, what was typed (with the offset `replay --at` plays it
  from), the exec, the file (with its sha256) and the flow (5-tuple, bytes); the HTML page
  escapes what was typed. `warden recycle` keeps signed evidence of that boot, which verifies,
  and fails naming the member once a byte of it changes; the guest comes back without the
  file.
- A minimal guest with `recycle = "on-logout"` is recycled by itself once its console
  session ends, evidence kept, its disk pristine again.
"""

import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.forensics.test_forensics_evidence import flip_inside
from tests.honeypot.test_honeypot_guests import Intruder, install
from tests.support.daemon import DaemonProc
from tests.support.honeypot import honeypot_kernel
from tests.support.netlab import (
    OUTSIDE_IP,
    Lab,
    guest_sh,
    net_fleet,
    net_machine,
    wait_for,
    wait_running,
)

pytestmark = [pytest.mark.guest, pytest.mark.slow]

NET = '[[network]]\nname = "fx0"\nsubnet = "10.79.0.0/24"\nnat = true\n'
POT_IP = "10.79.0.10"


@pytest.fixture
def lab(daemon: DaemonProc) -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
    print("---- daemon log ----\n" + daemon.log_text()[-6000:])


def events(d: DaemonProc, machine: str) -> list[dict[str, Any]]:
    return list(json.loads(d.cli("events", machine, "--json").stdout))


def timeline(d: DaemonProc, name: str, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(d.cli("timeline", name, "--json", *args, timeout=600).stdout))


def flip_member_byte(path: Path, member_suffix: str) -> str:
    with tarfile.open(path) as tar:
        name = next(i.name for i in tar.getmembers() if i.name.endswith(member_suffix))
    flip_inside(path, name)
    return name.split("/", 1)[1]


def archive_json(path: Path, member: str) -> Any:
    with tarfile.open(path) as tar:
        f = tar.extractfile(next(i for i in tar.getmembers() if i.name.endswith("/" + member)))
        assert f is not None
        return json.loads(f.read())


@pytest.mark.timeout(1500)  # Debian guests: two first boots (the image may be built first)
def test_an_intruders_session_is_one_timeline_and_recycle_keeps_it_and_drops_the_file(
    daemon: DaemonProc, lab: Lab, tmp_path: Path
) -> None:
    honeypot_kernel()
    install(daemon, with_debian=True)
    intruder = Intruder(lab, tmp_path)
    pot = net_machine(
        "pot", [("fx0", POT_IP)], memory="256M", image="debian", kernel="honeypot",
        tty_log=True, disguise="baremetal", honeypot=True, forwards=["tcp:2022:22"],
        ssh_keys=[intruder.public],
    )  # fmt: skip
    daemon.apply(net_fleet(lab.host, [pot], networks=NET))
    peer_log = tmp_path / "peer.log"
    lab.peer(lab.outside, "accept", "7777", str(peer_log))
    wait_running(daemon, "pot")
    intruder.wait(2022)

    s = intruder.session(2022)
    try:
        # the baremetal persona names the host (e.g. muc-web01), not "pot"
        s.expect(rb"admin@[a-z0-9-]+:~\$ ", 120)
        s.send("echo secret-$((6*7)) > /tmp/loot.txt\n")
        s.expect(rb"\$ ", 30)
        s.send("cat < /dev/tcp/" + OUTSIDE_IP + "/7777\n")
        s.expect(rb"peer=", 60)
        s.send("echo '<script>alert(1)</script>'\n")
        s.expect(rb"\r<script>alert\(1\)</script>\r\n", 30)
        s.send("exit\n")
        assert s.wait(60) == 0
    finally:
        s.close()

    # tcpdump hands frames to its file in blocks (up to 1 s late): until the flow is there
    def flows_seen() -> list[dict[str, Any]] | None:
        doc = timeline(daemon, "pot", "--sync")
        out = [e for e in doc if e["kind"] == "flow" and e.get("dport") == 7777]
        return doc if out else None

    doc = wait_for("the connection in the capture", flows_seen, 120, 3)
    assert [e["time_us"] for e in doc] == sorted(e["time_us"] for e in doc)
    assert all({"time", "kind"} <= e.keys() for e in doc)
    logins = [e for e in doc if e["kind"] == "session" and e["action"] == "login"]
    assert [e["uid"] for e in logins] == [1000] and logins[0]["session"].startswith("pts")
    session = logins[0]["session"]
    typed = {e["text"]: e for e in doc if e["kind"] == "input" and e["session"] == session}
    line = typed["echo secret-$((6*7)) > /tmp/loot.txt"]
    assert line["replay"].startswith("warden replay pot:tty --boot 1 --tty ")
    cat = [e for e in doc if e["kind"] == "exec" and e["argv"] == ["cat"]]
    assert len(cat) == 1 and cat[0]["uid"] == 1000 and cat[0]["session"] == session
    files = {e["path"]: e for e in doc if e["kind"] == "file"}
    loot = files["/tmp/loot.txt"]
    assert loot["action"] == "created" and loot["size"] == len("secret-42\n")
    assert loot["sha256"] == hashlib.sha256(b"secret-42\n").hexdigest()
    flow = next(e for e in doc if e["kind"] == "flow" and e.get("dport") == 7777)
    assert (flow["proto"], flow["src"], flow["dst"]) == ("tcp", POT_IP, OUTSIDE_IP)
    assert flow["direction"] == "outbound" and flow["bytes_in"] > 0 and flow["tcp"]["syn"]
    ssh_in = [e for e in doc if e["kind"] == "flow" and e.get("dport") == 22]
    assert ssh_in and all(e["direction"] == "inbound" for e in ssh_in)
    # the typed line's offset starts a replay right at it
    r = daemon.cli("replay", "pot:tty", "--tty", str(line["tty"]), "--at", line["offset"],
                   "--speed", "1000", "--max-idle", "0.01")  # fmt: skip
    assert "secret-$((6*7))" in r.stdout
    # what was typed is text on the page, never markup
    page = tmp_path / "pot.html"
    daemon.cli("timeline", "pot", "--html", str(page), timeout=600)
    text = page.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script" not in text

    # evidence of the running guest: paused only for the copy of its disk
    live = tmp_path / "live.tar"
    took = json.loads(daemon.cli("evidence", "pot", "--out", str(live), "--json").stdout)
    print(f"evidence of the running Debian pot: paused {took['paused_seconds'] * 1e3:.1f} ms")
    assert daemon.cli("evidence", "verify", str(live)).returncode == 0
    assert daemon.ls()["pot"]["state"] == "running"

    # recycle: evidence kept, the disk dropped, booted pristine
    t0 = time.monotonic()
    rec = json.loads(daemon.cli("recycle", "pot", "--wait-evidence", "--json", timeout=600).stdout)
    print(f"recycle of the Debian pot: {time.monotonic() - t0:.1f}s, {rec}")
    ev = Path(rec["evidence"]["path"])
    assert ev.parent == daemon.layout.home / "evidence"
    assert daemon.cli("evidence", "verify", str(ev)).returncode == 0
    kept = archive_json(ev, "timeline.json")
    assert any(e["kind"] == "file" and e["path"] == "/tmp/loot.txt" for e in kept)
    assert any(e["kind"] == "flow" and e.get("dport") == 7777 for e in kept)
    manifest = archive_json(ev, "MANIFEST.json")
    names = {f["path"] for f in manifest["files"]}
    assert {"logs/tty-1.wlog.gz", "disk/cow-data.bin"} <= names
    assert any(n.startswith("pcap/boot-0001-eth0.pcap") for n in names)
    member = flip_member_byte(ev, "/logs/tty-1.wlog.gz")
    bad = daemon.cli("evidence", "verify", str(ev), check=False)
    assert bad.returncode == 1 and f"FAIL {member}: sha256" in bad.stdout, bad.stdout

    wait_running(daemon, "pot")
    intruder.wait(2022)
    r = intruder.run(2022, "test -e /tmp/loot.txt && echo still-there || echo gone")
    assert r.stdout.strip() == "gone", r.stdout + r.stderr
    assert daemon.ls()["pot"]["boot"] == 2
    kinds = [e["kind"] for e in events(daemon, "pot")]
    assert "recycled" in kinds and "evidence-kept" in kinds


@pytest.mark.timeout(300)
def test_on_logout_recycles_by_itself_once_the_last_session_ends(daemon: DaemonProc) -> None:
    daemon.apply(FLEET_HEAD + machine_toml("m1", recycle="on-logout"))
    wait_running(daemon, "m1")
    assert "recycled" not in [e["kind"] for e in events(daemon, "m1")]  # nobody came yet
    guest_sh(daemon, "m1", "echo loot > /root/loot")  # attach, type, detach

    def kept() -> dict[str, Any] | None:
        return next((e for e in events(daemon, "m1") if e["kind"] == "evidence-kept"), None)

    ev = wait_for("the recycle's evidence", kept, 60, 0.5)
    assert ev["reason"] == "recycle: on-logout: the last session ended" and ev["boot"] == 1
    path = Path(ev["path"])
    assert daemon.cli("evidence", "verify", str(path)).returncode == 0
    files = [e for e in archive_json(path, "timeline.json") if e["kind"] == "file"]
    assert [(f["path"], f["sha256"]) for f in files if f["path"] == "/root/loot"] == [
        ("/root/loot", hashlib.sha256(b"loot\n").hexdigest())
    ]
    wait_for("boot 2", lambda: daemon.ls()["m1"]["boot"] == 2, 60, 0.2)
    wait_running(daemon, "m1")
    assert guest_sh(daemon, "m1", "ls /root").strip() == ""


@pytest.mark.timeout(300)
def test_a_file_written_just_before_a_recycle_is_in_its_evidence(daemon: DaemonProc) -> None:
    """The guest's page cache is flushed (sysrq s) and its journal replayed on the copy: a
    file written a moment before the recycle is in the evidence, with its content's sum."""
    daemon.apply(FLEET_HEAD + machine_toml("m1"))
    wait_running(daemon, "m1")
    # --since a snapshot: what changed after it, not what the disk had before
    guest_sh(daemon, "m1", "echo old > /root/old; sync")
    daemon.cli("disk", "snapshot", "m1", "--name", "before")
    guest_sh(daemon, "m1", "echo new > /root/new; echo changed > /root/old")
    since = timeline(daemon, "m1", "--since", "before", "--sync")
    changed = {e["path"]: e["action"] for e in since if e["kind"] == "file"}
    assert changed.get("/root/new") == "created" and changed.get("/root/old") == "modified"
    whole = {e["path"] for e in timeline(daemon, "m1") if e["kind"] == "file"}
    assert {"/root/new", "/root/old"} <= whole
    unchanged = [p for p in whole - set(changed) if p.startswith("/root/")]
    assert unchanged == [], unchanged  # nothing else under /root changed after the snapshot
    for i in range(2):
        wait_running(daemon, "m1")
        guest_sh(daemon, "m1", f"echo loot-{i} > /root/loot-{i}")
        out = daemon.cli("recycle", "m1", "--wait-evidence", "--json", timeout=300).stdout
        rec = json.loads(out)
        path = Path(rec["evidence"]["path"])
        files = {e["path"]: e for e in archive_json(path, "timeline.json") if e["kind"] == "file"}
        assert f"/root/loot-{i}" in files, (rec, sorted(files))
        want = hashlib.sha256(f"loot-{i}\n".encode()).hexdigest()
        assert files[f"/root/loot-{i}"]["sha256"] == want
