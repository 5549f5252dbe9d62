"""The logs manifest: each part's opening and closing, kept outside the parts
(docs/formats/session-log.md, "Manifest").

A part's HMAC chain shows every edit but one: a cut exactly after a record. A closed part ends
with END, so a cut shows, unless it falls right after a `daemon-detach`, which is a legitimate
end while a guest outlives its daemon. And a deleted part leaves nothing to check. So the
writer notes here, for every part, when it was opened, continued, left and ended, with its
last record's seq and MAC; `warden logs verify` holds each part to what this says.

The codec and the reader are pure; `ManifestWriter` is used by the writer thread only.
"""

import contextlib
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.sessionlog import store as logstore

FILE = logstore.MANIFEST
LINE_MAX = 4096  # no entry is longer; a longer line is damage
KINDS = ("open", "resume", "detach", "end")


def entry_mac(key: bytes, entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hmac"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, blob, hashlib.sha256).hexdigest()


def encode(key: bytes, entry: dict[str, Any]) -> bytes:
    line = dict(entry, hmac=entry_mac(key, entry))
    return json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"


PartKey = tuple[str, int, int]  # line, boot, part


@dataclass
class PartNotes:
    """What the manifest says about one part: its entries, newest last."""

    line: str
    boot: int
    part: int
    mac0: str = ""
    opened_us: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # the newest entry

    @property
    def kind(self) -> str:
        return str(self.last.get("k", ""))


@dataclass
class Manifest:
    """A manifest as read: the parts it names and what was wrong with its entries."""

    parts: dict[PartKey, PartNotes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    last_n: int = 0
    good_end: int = 0  # offset just after the last whole line
    bad_n: int | None = None


def parse(data: bytes, key: bytes | None, where: str = FILE) -> Manifest:
    """Read every entry; with `key`, check each entry's HMAC and the numbering."""
    m = Manifest()
    offset = 0
    while offset < len(data):
        nl = data.find(b"\n", offset, offset + LINE_MAX + 1)
        if nl < 0:
            if len(data) - offset > LINE_MAX:
                m.problems.append(f"{where}: a line at byte {offset} is over {LINE_MAX} bytes")
            break  # a line cut by a crash while it was appended: not an entry
        raw = data[offset:nl]
        offset = nl + 1
        m.good_end = offset
        want = m.last_n + 1
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            n = int(entry["n"])
            kind = str(entry["k"])
            pk = (str(entry["line"]), int(entry["boot"]), int(entry["part"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            m.problems.append(f"{where}: entry {want} (byte {offset - len(raw) - 1}) is not one")
            m.bad_n = m.bad_n or want
            m.last_n += 1
            continue
        if key is not None and not hmac.compare_digest(
            str(entry.get("hmac", "")), entry_mac(key, entry)
        ):
            m.problems.append(f"{where}: entry {n} fails its HMAC: it was edited or forged")
            m.bad_n = m.bad_n or n
            m.last_n = max(m.last_n, n)
            continue
        if n != want:
            what = "removed" if n > want else "repeated or reordered"
            m.problems.append(f"{where}: entry {n} follows entry {m.last_n}: entries were {what}")
            m.bad_n = m.bad_n or want
        m.last_n = max(m.last_n, n)
        m.entries += 1
        if kind not in KINDS:
            continue  # a newer writer's kind: checked, not interpreted
        notes = m.parts.get(pk)
        if notes is None:
            notes = m.parts[pk] = PartNotes(*pk)
        if kind == "open":
            notes.mac0 = str(entry.get("mac0", ""))
            notes.opened_us = int(entry.get("t", 0))
        notes.last = entry
    return m


def read(path: Path, key: bytes | None) -> Manifest | None:
    """The manifest at `path`, or None if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse(data, key, str(path))


class ManifestWriter:
    """Appends entries to one logs directory's manifest (the writer thread's)."""

    def __init__(self, directory: Path, key: bytes, machine: str):
        self.path = directory / FILE
        self.key = key
        self.machine = machine
        self.n: int | None = None  # the last entry's number, once the file was read
        self.ino = 0  # of the file read: `warden destroy` may have moved it away since

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
            self.ino = self.path.stat().st_ino
        except FileNotFoundError:
            self.n, self.ino = 0, 0
            return
        m = parse(data, None)
        if m.good_end < len(data):
            with open(self.path, "r+b") as f:  # cut the line a crash left half written
                f.truncate(m.good_end)
        self.n = m.last_n

    def _current(self) -> bool:
        try:
            return self.path.stat().st_ino == self.ino
        except FileNotFoundError:
            return self.ino == 0

    def note(
        self, kind: str, line: str, boot: int, part: int, t: int, sync: bool, **fields: Any
    ) -> int:
        """Append one entry; returns its size in bytes (the quota counts it)."""
        if self.n is None or not self._current():
            self._load()
        assert self.n is not None
        entry = {
            "n": self.n + 1,
            "k": kind,
            "machine": self.machine,
            "line": line,
            "boot": boot,
            "part": part,
            "t": t,
            **fields,
        }
        blob = encode(self.key, entry)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.ino = os.fstat(fd).st_ino
        try:
            n = os.write(fd, blob)
            if n < len(blob):  # a full disk: take the half line back, the entry is lost
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.fstat(fd).st_size - n)
                raise OSError(28, "No space left on device")
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self.n += 1
        return len(blob)
