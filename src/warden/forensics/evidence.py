"""Evidence archives: pack a boot's records into one signed tar, verify one, unpack one.

The format is docs/formats/evidence.md; the constants below quote it. Packing streams every
member through SHA-256 as it goes into the tar (each file read once), then writes the manifest
and its Ed25519 signature last. Verifying reads the archive once and extracts nothing.
"""

import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from warden.disk import hostfile
from warden.errors import WardenError
from warden.forensics import signing
from warden.uml import cow

FORMAT = "warden-evidence"
VERSION = 1
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
SIGNER_PEM = "signer.pem"
SIG_LEN = 64
MANIFEST_MAX = 16 << 20
MEMBER_MAX = 1_000_000
CHUNK = 1 << 20
COW_HEADER = "disk/cow-header.bin"
COW_DATA = "disk/cow-data.bin"
COW_EXTENTS = "disk/cow-extents.json"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class EvidenceError(WardenError):
    """An archive could not be written or read."""


@dataclass(frozen=True)
class CowExtents:
    """The data extents of a COW file after its header and bitmap (docs: disk/cow-data.bin)."""

    path: Path
    data_offset: int
    length: int
    extents: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.extents)

    def index(self) -> bytes:
        doc = {"length": self.length, "extents": [list(e) for e in self.extents]}
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Member:
    path: str  # relative to the archive's top directory
    source: Path | bytes | CowExtents


def cow_members(cow_path: Path, disk_size: int) -> tuple[list[Member], dict[str, Any]]:
    """The three disk/ members of a COW file that no kernel writes any more, and its
    manifest `disk` entry. `disk_size`: the size of the base image warden recorded for it
    (the header is the guest's to write: it does not decide how much bitmap is read)."""
    c = cow.open_cow(cow_path, disk_size)
    h = c.header
    fd = os.open(cow_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = os.fstat(fd).st_size
        header = os.pread(fd, h.data_offset, 0)
        extents = tuple((s, e - s) for s, e in hostfile.data_extents(fd, h.data_offset, length))
    finally:
        os.close(fd)
    ext = CowExtents(cow_path, h.data_offset, length, extents)
    members = [
        Member(COW_HEADER, header),
        Member(COW_DATA, ext),
        Member(COW_EXTENTS, ext.index()),
    ]
    meta = {
        "form": "written-extents",
        "cow_length": length,
        "data_offset": h.data_offset,
        "backing": os.fsdecode(h.backing),
        "backing_size": h.size,
        "backing_mtime": h.mtime,
        "sectors_written": c.written(),
    }
    return members, meta


class _Reader:
    """What tarfile copies from: at most `size` bytes of a source, hashed on the way."""

    def __init__(self, chunks: Iterator[bytes], size: int):
        self._chunks = chunks
        self._buf = b""
        self.left = size
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.left
        while len(self._buf) < n and self.left > len(self._buf):
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        out, self._buf = self._buf[:n], self._buf[n:]
        out = out[: self.left]
        self.left -= len(out)
        self.sha.update(out)
        return out


def _file_chunks(fd: int, start: int, size: int) -> Iterator[bytes]:
    pos, end = start, start + size
    while pos < end:
        data = os.pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            raise EvidenceError(f"fd {fd}: ended at {pos}, expected {end} (truncated meanwhile?)")
        pos += len(data)
        yield data


@contextlib.contextmanager
def _opened(source: Path | bytes | CowExtents) -> Iterator[tuple[Iterator[bytes], int, float]]:
    """(chunks, size, mtime) of a member's source; a file is taken up to its size now."""
    if isinstance(source, bytes):
        yield iter([source]), len(source), 0.0
        return
    path = source.path if isinstance(source, CowExtents) else source
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if isinstance(source, CowExtents):

            def extents() -> Iterator[bytes]:
                for start, n in source.extents:
                    yield from _file_chunks(fd, start, n)

            yield extents(), source.size, st.st_mtime
        else:
            yield _file_chunks(fd, 0, st.st_size), st.st_size, st.st_mtime
    finally:
        os.close(fd)


def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def now_iso() -> tuple[str, int]:
    t = datetime.datetime.now(datetime.UTC)
    us = int(t.timestamp() * 1_000_000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), us


def pack(
    out: Path,
    top: str,
    members: list[Member],
    manifest: dict[str, Any],
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Write the archive `out` (never replacing a file); returns the manifest written."""
    if not _SAFE.match(top) or "/" in top:
        raise EvidenceError(f"archive directory {top!r}: use letters, digits, '.', '_', '-'")
    pub = key.public_key()
    members = [*members, Member(SIGNER_PEM, signing.public_pem(pub))]
    seen: set[str] = set()
    for m in members:
        if not _SAFE.match(m.path) or ".." in m.path.split("/") or m.path in seen:
            raise EvidenceError(f"evidence member {m.path!r}: not a safe, unique name")
        seen.add(m.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = hostfile.temp_file(out.parent, out.name)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            files = _write(f, top, members, manifest, key, pub)
            f.flush()
            os.fsync(fd)
        os.close(fd)
        fd = -1
        hostfile.publish(temp, out)
        hostfile.fsync_dir(out.parent)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if isinstance(e, OSError) and e.errno in hostfile.FULL_ERRNOS:
            raise EvidenceError(
                f"{out.parent}: no space left for {out.name}; nothing kept"
            ) from None
        if isinstance(e, OSError):
            raise EvidenceError(f"writing {out}: {e}") from None
        raise
    return files


def _write(
    f: IO[bytes],
    top: str,
    members: list[Member],
    manifest: dict[str, Any],
    key: Ed25519PrivateKey,
    pub: Ed25519PublicKey,
) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            with _opened(m.source) as (chunks, size, mtime):
                reader = _Reader(chunks, size)
                tar.addfile(_info(f"{top}/{m.path}", size, mtime), reader)
                files.append({"path": m.path, "size": size, "sha256": reader.sha.hexdigest()})
        created, created_us = now_iso()
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "host": socket.gethostname(),
            "created": created,
            "created_us": created_us,
            **manifest,
            "signer": signing.describe(pub),
            "files": files,
        }
        body = (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()
        sig = key.sign(body)
        when = created_us / 1e6
        tar.addfile(_info(f"{top}/{MANIFEST}", len(body), when), _Reader(iter([body]), len(body)))
        tar.addfile(_info(f"{top}/{SIGNATURE}", len(sig), when), _Reader(iter([sig]), len(sig)))
    return doc


# ---- verify -------------------------------------------------------------------------------
@dataclass
class Verdict:
    path: Path
    problems: list[str] = field(default_factory=list)  # each names a member first
    manifest: dict[str, Any] = field(default_factory=dict)
    checked: int = 0
    key_id: str = ""
    pinned: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path, pinned_key: Ed25519PublicKey | None) -> Verdict:
    v = Verdict(path)
    top: str | None = None
    seen: dict[str, tuple[int, str]] = {}  # member -> (size, sha256)
    names: set[str] = set()
    body = sig = b""
    try:
        tar = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as e:
        v.problems.append(f"{path}: not a readable tar archive ({e})")
        return v
    with tar:
        try:
            for n, info in enumerate(tar):
                if n >= MEMBER_MAX:
                    v.problems.append(f"{path}: more than {MEMBER_MAX} members; stopped")
                    break
                d, _, rel = info.name.partition("/")
                if top is None:
                    top = d
                if d != top or not rel or not _SAFE.match(rel) or ".." in rel.split("/"):
                    v.problems.append(f"{info.name}: not a safe name under one directory")
                    continue
                if not info.isfile():
                    v.problems.append(f"{rel}: not a regular file (tar type {info.type!r})")
                    continue
                if rel in names:
                    v.problems.append(f"{rel}: appears twice in the archive")
                    continue
                names.add(rel)
                f = tar.extractfile(info)
                assert f is not None
                if rel == MANIFEST:
                    body = f.read(MANIFEST_MAX + 1)
                    if len(body) > MANIFEST_MAX:
                        v.problems.append(f"{MANIFEST}: larger than {MANIFEST_MAX} bytes")
                        body = b""
                elif rel == SIGNATURE:
                    sig = f.read(SIG_LEN + 1)
                else:
                    sha = hashlib.sha256()
                    size = 0
                    while chunk := f.read(CHUNK):
                        sha.update(chunk)
                        size += len(chunk)
                    seen[rel] = (size, sha.hexdigest())
        except (OSError, tarfile.TarError, EOFError) as e:
            v.problems.append(f"{path}: the archive is damaged or cut ({e})")
    _check_manifest(v, body, sig, seen, pinned_key)
    return v


def _check_manifest(
    v: Verdict,
    body: bytes,
    sig: bytes,
    seen: dict[str, tuple[int, str]],
    pinned_key: Ed25519PublicKey | None,
) -> None:
    if not body:
        v.problems.append(f"{MANIFEST}: missing: nothing in the archive can be trusted")
        return
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        v.problems.append(f"{MANIFEST}: not JSON ({e})")
        return
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        v.problems.append(f"{MANIFEST}: not a {FORMAT} manifest")
        return
    if doc.get("version") != VERSION:
        v.problems.append(f"{MANIFEST}: version {doc.get('version')!r}; this warden reads 1")
        return
    v.manifest = doc
    try:
        signer = signing.from_description(doc.get("signer"))
    except ValueError as e:
        v.problems.append(f"{MANIFEST}: {e}")
        signer = None
    if signer is not None:
        v.key_id = signing.key_id(signer)
        if len(sig) != SIG_LEN:
            v.problems.append(f"{SIGNATURE}: missing or not {SIG_LEN} bytes")
        elif not signing.valid(signer, sig, body):
            v.problems.append(f"{MANIFEST}: the signature does not match (edited after signing)")
        if pinned_key is None:
            v.problems.append(
                f"{MANIFEST}: signed by key {v.key_id}, but no key is pinned: give the host's "
                f"public key with --key (WARDEN_HOME/keys/{signing.PUBLIC})"
            )
        elif signing.raw_public(pinned_key) != signing.raw_public(signer):
            v.problems.append(
                f"{MANIFEST}: signed by key {v.key_id}, not by the pinned key "
                f"{signing.key_id(pinned_key)}"
            )
        else:
            v.pinned = True
    listed: set[str] = set()
    for entry in doc.get("files", []):
        if not isinstance(entry, dict):
            v.problems.append(f"{MANIFEST}: a files entry is not an object")
            continue
        p = str(entry.get("path"))
        listed.add(p)
        got = seen.get(p)
        if got is None:
            v.problems.append(f"{p}: listed in the manifest but not in the archive")
        elif got[0] != entry.get("size"):
            v.problems.append(f"{p}: {got[0]} bytes, the manifest says {entry.get('size')}")
        elif got[1] != entry.get("sha256"):
            v.problems.append(
                f"{p}: sha256 {got[1][:16]}… differs from the manifest's "
                f"{str(entry.get('sha256'))[:16]}…"
            )
        else:
            v.checked += 1
    for p in sorted(seen.keys() - listed):
        v.problems.append(f"{p}: in the archive but not in the manifest (added later?)")


# ---- unpack -------------------------------------------------------------------------------
def unpack(path: Path, dest: Path) -> list[Path]:
    """Write a *verified* archive's members under `dest` (which must not exist) and rebuild
    disk/disk.cow from the extents. Names were checked by verify; checked again here."""
    dest.mkdir(parents=False, exist_ok=False)
    written: list[Path] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            _, _, rel = info.name.partition("/")
            if not info.isfile() or not _SAFE.match(rel) or ".." in rel.split("/"):
                raise EvidenceError(f"{info.name}: not a safe member; run verify first")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            f = tar.extractfile(info)
            assert f is not None
            with open(target, "xb") as out:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
            written.append(target)
    index = dest / COW_EXTENTS
    if index.exists():
        written.append(_rebuild_cow(dest))
    return written


def _rebuild_cow(dest: Path) -> Path:
    doc = json.loads((dest / COW_EXTENTS).read_text())
    out = dest / "disk" / "disk.cow"
    with open(out, "xb") as f, open(dest / COW_HEADER, "rb") as h, open(dest / COW_DATA, "rb") as d:
        f.write(h.read())
        for start, n in doc["extents"]:
            f.seek(int(start))
            left = int(n)
            while left:
                chunk = d.read(min(CHUNK, left))
                if not chunk:
                    raise EvidenceError(f"{dest / COW_DATA}: shorter than its extents say")
                f.write(chunk)
                left -= len(chunk)
        f.truncate(int(doc["length"]))
    return out
