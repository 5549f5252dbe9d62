"""Issue 16, part 2 without a guest: the evidence archive (docs/formats/evidence.md) is
signed, verified member by member, names what was tampered with, trusts only the pinned
key, and unpacks to the same COW file. And the recycle policy (part 3), on scripted
observations, and its fleet key.
"""

import concurrent.futures
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from warden.disk import create
from warden.errors import SpecError
from warden.forensics import evidence, signing
from warden.forensics.recycle import LOGOUT_GRACE, RecycleWatch
from warden.paths import Layout
from warden.spec import fleet
from warden.spec.recycle import RecyclePolicy, parse, parse_duration


def a_cow(tmp: Path) -> Path:
    base = tmp / "base.img"
    with open(base, "wb") as f:
        f.truncate(64 << 20)
    cow = tmp / "disk.cow"
    h = create.create(cow, base)
    with open(cow, "r+b") as f:  # what a guest wrote: two extents far apart
        f.seek(h.data_offset + (1 << 20))
        f.write(b"intruder was here\n" * 300)
        f.seek(h.data_offset + (40 << 20))
        f.write(os.urandom(8192))
    return cow


def an_archive(home: Layout, tmp: Path, name: str = "ev.tar") -> Path:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "tty-3.wlog.gz").write_bytes(os.urandom(5000))
    (logs / "kernel-3.log").write_text("Linux version 6.1\n")
    cow_members, disk = evidence.cow_members(a_cow(tmp), 64 << 20)
    members = [
        evidence.Member("timeline.json", b"[]\n"),
        evidence.Member("logs/tty-3.wlog.gz", logs / "tty-3.wlog.gz"),
        evidence.Member("logs/kernel-3.log", logs / "kernel-3.log"),
        *cow_members,
    ]
    out = tmp / name
    manifest = {"machine": "pot", "boots": [3], "reason": "evidence", "disk": disk}
    evidence.pack(out, "pot-boot3-x", members, manifest, signing.host_key(home))
    return out


def verify(home: Layout, path: Path) -> evidence.Verdict:
    return evidence.verify(path, signing.pinned(home, None))


def test_a_packed_archive_verifies_and_lists_every_member(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    v = verify(home, path)
    assert v.ok, v.problems
    assert v.pinned and v.key_id == signing.key_id(signing.host_key(home).public_key())
    paths = [f["path"] for f in v.manifest["files"]]
    assert paths == [
        "timeline.json",
        "logs/tty-3.wlog.gz",
        "logs/kernel-3.log",
        "disk/cow-header.bin",
        "disk/cow-data.bin",
        "disk/cow-extents.json",
        "signer.pem",
    ]
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[-2:] == ["pot-boot3-x/MANIFEST.json", "pot-boot3-x/MANIFEST.sig"]
        data = tar.extractfile("pot-boot3-x/disk/cow-data.bin")
        assert data is not None and len(data.read()) < 1 << 20  # holes are not stored
    # the key files: private 0600, public beside it
    assert (home.keys / signing.PRIVATE).stat().st_mode & 0o777 == 0o600
    assert (home.keys / signing.PUBLIC).read_bytes().startswith(b"-----BEGIN PUBLIC KEY")


def flip_inside(path: Path, member: str) -> None:
    """Change one byte of a member's content in place (as someone editing the archive)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_a_tampered_member_fails_and_is_named(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    flip_inside(path, "pot-boot3-x/logs/tty-3.wlog.gz")
    v = verify(home, path)
    assert not v.ok
    assert len(v.problems) == 1 and v.problems[0].startswith("logs/tty-3.wlog.gz: sha256 ")
    r = subprocess.run(
        [sys.executable, "-m", "warden", "evidence", "verify", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "FAIL logs/tty-3.wlog.gz: sha256" in r.stdout, r.stdout + r.stderr


def test_an_edited_manifest_fails_its_signature(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    flip_inside(path, "pot-boot3-x/MANIFEST.json")
    v = verify(home, path)
    assert any(p.startswith("MANIFEST.json:") for p in v.problems), v.problems


def rewrite(src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes]) -> None:
    """A copy of an archive with members replaced, dropped (None) or added."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            f = tin.extractfile(info)
            assert f is not None
            data = change.get(info.name, f.read())
            if data is None:
                continue
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_a_member_added_or_removed_is_named(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    added = tmp_path / "added.tar"
    rewrite(path, added, {}, {"pot-boot3-x/logs/extra.log": b"planted"})
    assert verify(home, added).problems == [
        "logs/extra.log: in the archive but not in the manifest (added later?)"
    ]
    dropped = tmp_path / "dropped.tar"
    rewrite(path, dropped, {"pot-boot3-x/logs/kernel-3.log": None}, {})
    assert verify(home, dropped).problems == [
        "logs/kernel-3.log: listed in the manifest but not in the archive"
    ]


def test_a_forgery_signed_with_another_key_fails(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    # a forger changes a member, fixes the manifest's sum and signs with a key of their own
    with tarfile.open(path) as tar:
        f = tar.extractfile("pot-boot3-x/MANIFEST.json")
        assert f is not None
        doc = json.loads(f.read())
    planted = b"[]\n "
    for e in doc["files"]:
        if e["path"] == "timeline.json":
            e["size"], e["sha256"] = len(planted), hashlib.sha256(planted).hexdigest()
    mine = Ed25519PrivateKey.generate()
    doc["signer"] = signing.describe(mine.public_key())
    body = (json.dumps(doc, indent=1) + "\n").encode()
    forged = tmp_path / "forged.tar"
    rewrite(
        path,
        forged,
        {
            "pot-boot3-x/timeline.json": planted,
            "pot-boot3-x/MANIFEST.json": body,
            "pot-boot3-x/MANIFEST.sig": mine.sign(body),
        },
        {},
    )
    v = verify(home, forged)
    assert len(v.problems) == 1 and "not by the pinned key" in v.problems[0], v.problems
    # with the forger's key pinned it would pass: the pin is what makes it "this host"
    assert evidence.verify(forged, mine.public_key()).ok


def test_without_a_pinned_key_verify_says_so(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    v = evidence.verify(path, None)
    assert len(v.problems) == 1 and "no key is pinned" in v.problems[0]


def test_unpack_rebuilds_the_cow_file_byte_for_byte(home: Layout, tmp_path: Path) -> None:
    path = an_archive(home, tmp_path)
    dest = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "warden", "evidence", "unpack", str(path), str(dest)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rebuilt = dest / "disk" / "disk.cow"
    assert rebuilt.read_bytes() == (tmp_path / "disk.cow").read_bytes()
    assert rebuilt.stat().st_blocks * 512 < 2 << 20  # sparse, like the original


def test_damaged_archives_are_refused_with_the_reason(home: Layout, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    assert "not a readable tar archive" in verify(home, junk).problems[0]
    path = an_archive(home, tmp_path)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    problems = verify(home, cut).problems
    assert problems and any("MANIFEST.json: missing" in p or "damaged" in p for p in problems)
    evil = tmp_path / "evil.tar"
    rewrite(path, evil, {}, {"pot-boot3-x/../../etc/passwd": b"x"})
    assert any("not a safe name" in p for p in verify(home, evil).problems)
    with pytest.raises(evidence.EvidenceError, match="not a safe member"):
        evidence.unpack(evil, tmp_path / "evil-out")


def test_threads_making_the_first_key_at_once_all_get_one_key(home: Layout) -> None:
    """Two recycles of a fresh home pack their evidence at once, each in an executor thread
    of the one daemon: both must get the same key (CI saw one fail with EEXIST)."""
    barrier = threading.Barrier(8)

    def make() -> bytes:
        barrier.wait()
        return signing.raw_public(signing.host_key(home).public_key())

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = [f.result() for f in [pool.submit(make) for _ in range(8)]]
    assert len(set(keys)) == 1
    assert sorted(p.name for p in home.keys.iterdir()) == [signing.PRIVATE, signing.PUBLIC]


def test_pack_never_overwrites(home: Layout, tmp_path: Path) -> None:
    an_archive(home, tmp_path)
    with pytest.raises(Exception, match="already exists"):
        an_archive(home, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- recycle: the policy -------------------------------------------------------------------
def test_on_logout_waits_for_the_last_session_and_a_grace() -> None:
    w = RecycleWatch(RecyclePolicy("on-logout"), boot=1, started=0.0)
    assert w.due(1000.0) is None  # nobody ever came: a pristine guest stays
    w.attached(10.0)  # an operator on the console
    w.login(7, 11.0)  # and an ssh login inside the guest
    w.detached(12.0)
    assert w.due(100.0) is None  # the ssh session still runs
    w.closed(7, 200.0)
    assert w.due(200.0 + LOGOUT_GRACE - 0.1) is None
    w.login(9, 203.0)  # back within the grace: the guest stays
    w.closed(9, 300.0)
    assert w.due(300.0 + LOGOUT_GRACE) == "on-logout: the last session ended"
    assert w.due(400.0) is None  # once per boot


def test_idle_counts_typing_and_execs_on_terminals_not_output() -> None:
    w = RecycleWatch(RecyclePolicy("idle", 60.0), boot=1, started=0.0)
    assert w.due(10_000.0) is None  # untouched
    w.login(3, 100.0)
    w.activity(150.0)
    assert w.due(209.0) is None
    assert w.due(210.0) == "idle 60s: nothing done for 60s"
    w2 = RecycleWatch(RecyclePolicy("idle", 60.0), boot=1, started=0.0)
    w2.detached(5.0)  # a detach of a client from before this daemon: nothing to count
    assert w2.clients == 0 and w2.due(1000.0) is None


def test_every_is_by_uptime() -> None:
    w = RecycleWatch(RecyclePolicy("every", 3600.0), boot=2, started=50.0)
    assert w.due(3649.0) is None
    assert w.due(3650.0) == "every 3600s: the boot ran 3600s"


def test_the_fleet_key_is_checked_with_clear_errors() -> None:
    assert parse("on-logout") == RecyclePolicy("on-logout")
    assert parse("idle:15m") == RecyclePolicy("idle", 900.0)
    assert parse("every:1h30m") == RecyclePolicy("every", 5400.0)
    assert parse("") is None and parse_duration("2d") == 172800
    head = '[[owner]]\nname = "alice"\n[[machine]]\nname = "pot"\nowner = "alice"\n'
    m = fleet.parse(head + 'recycle = "idle:90s"\n').machine("pot")
    assert m is not None and m.recycle_policy == RecyclePolicy("idle", 90.0)
    for bad, says in [
        ("on-login", 'expected "on-logout", "idle:DURATION" or "every:DURATION"'),
        ("idle:5s", "5s is out of range"),
        ("every:1x", "duration '1x': expected whole numbers with s, m, h or d"),
        ("idle:", "duration '': expected"),
    ]:
        with pytest.raises(SpecError) as e:
            fleet.parse(head + f'recycle = "{bad}"\n', "f.toml")
        assert f"f.toml: machine 'pot': recycle = '{bad}': " in str(e.value)
        assert says in str(e.value), str(e.value)
