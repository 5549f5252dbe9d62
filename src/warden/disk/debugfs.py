"""Reading an ext2/3/4 image with e2fsprogs' debugfs, in batches, without trusting its content.

The image may come from a hostile guest (a honeypot), so nothing it holds may steer the parser:
- Requests go to one `debugfs -f -` process per batch. Before each request the batch has a
  comment line `#NONCE i`, which debugfs echoes verbatim; NONCE is 128 random bits drawn after
  the image was written, so no file name or content can forge a separator.
- `ls -p` prints names raw (newlines included): entries are matched by their fixed structure
  `/ino/mode/uid/gid/name/size/` and a name cannot hold '/'.
- `stat` prints nothing the guest chose before the times; extended attribute values are
  escaped; a fast symlink's target comes last and its length is the inode's size.
- The image is opened read-only (debugfs without -w) and never mounted: mounting would hand the
  host kernel's ext4 driver a file system crafted by the guest.
"""

import os
import re
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from warden.disk.errors import DiffError

_ENTRY = re.compile(rb"/(\d+)/([0-7]{6})/(\d+)/(\d+)/([^/]*)/(\d*)/\n")
_STAT_HEAD = re.compile(
    rb"Inode: (\d+)\s+Type: ([A-Za-z ]+?)\s+Mode:\s+([0-7]+)\s+Flags: 0x([0-9a-f]+)\n"
    rb"[^\n]*\n"  # Generation / Version
    rb"User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size: (\d+)\n"
    rb"[^\n]*\n"  # File ACL
    rb"Links: (\d+)\s+Blockcount: (\d+)\n"
)
_MTIME = re.compile(rb"^ ?mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?", re.MULTILINE)
_CTIME = re.compile(rb"^ ?ctime: 0x([0-9a-f]+)(?::([0-9a-f]+))?", re.MULTILINE)
_FAST_LINK = b'Fast link dest: "'


@dataclass(frozen=True)
class Entry:
    """One line of `ls -p`."""

    ino: int
    mode: int
    uid: int
    gid: int
    name: bytes
    size: int | None  # None for directories

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class InodeInfo:
    """The parts of `stat <ino>` a diff compares."""

    ino: int
    mode: int  # permission bits (with setuid/setgid/sticky)
    uid: int
    gid: int
    size: int
    links: int
    mtime: tuple[int, int]  # raw seconds field and the extra (nanoseconds + epoch bits) field
    fast_link: bytes | None  # the target of a fast symlink
    ctime: tuple[int, int] = (0, 0)  # as mtime: when the inode last changed (guest clock)

    @property
    def ctime_ns(self) -> int:
        """The change time in ns since the epoch (ext4: a signed 32-bit second count, the
        extra field's low 2 bits extending it, its upper 30 bits the nanoseconds)."""
        raw, extra = self.ctime
        secs = (raw - (1 << 32) if raw & (1 << 31) else raw) + ((extra & 3) << 32)
        return secs * 1_000_000_000 + (extra >> 2)


def parse_ls(out: bytes, where: str) -> list[Entry]:
    entries: list[Entry] = []
    pos = 0
    while pos < len(out):
        if out[pos : pos + 1] == b"\n":
            pos += 1
            continue
        m = _ENTRY.match(out, pos)
        if not m:
            raise DiffError(f"{where}: unreadable directory listing at {out[pos : pos + 60]!r}")
        ino, mode, uid, gid, name, size = m.groups()
        entries.append(
            Entry(int(ino), int(mode, 8), int(uid), int(gid), name, int(size) if size else None)
        )
        pos = m.end()
    return entries


def parse_stat(out: bytes, where: str) -> InodeInfo:
    m = _STAT_HEAD.match(out)
    if not m:
        raise DiffError(f"{where}: unreadable inode: {out[:80]!r}")
    ino, kind, mode, _, uid, gid, size, links, _ = m.groups()
    t = _MTIME.search(out, m.end())
    if not t:
        raise DiffError(f"{where}: inode {int(ino)} has no mtime line")
    mtime = (int(t.group(1), 16), int(t.group(2) or b"0", 16))
    c = _CTIME.search(out, m.end())
    ctime = (int(c.group(1), 16), int(c.group(2) or b"0", 16)) if c else (0, 0)
    fast: bytes | None = None
    n = int(size)
    if kind == b"symlink" and n < 60:
        # ... Fast link dest: "<exactly n bytes>"\n  at the very end
        tail = out[-(len(_FAST_LINK) + n + 2) :]
        if tail.startswith(_FAST_LINK) and tail.endswith(b'"\n'):
            fast = tail[len(_FAST_LINK) : len(_FAST_LINK) + n]
    return InodeInfo(int(ino), int(mode, 8), int(uid), int(gid), n, int(links), mtime, fast, ctime)


def parse_blocks(out: bytes, where: str) -> list[int]:
    try:
        return [int(x) for x in out.split()]
    except ValueError:
        raise DiffError(f"{where}: unreadable block list {out[:80]!r}") from None


class Debugfs:
    """debugfs over one image, read-only; `run` sends a batch of requests, returns each output."""

    def __init__(self, image: Path):
        exe = shutil.which("debugfs") or next(
            (p for p in ("/usr/sbin/debugfs", "/sbin/debugfs") if os.path.exists(p)), None
        )
        if exe is None:
            raise DiffError(
                "debugfs is needed to read guest file systems: apt-get install e2fsprogs"
            )
        self.exe = exe
        self.image = image

    def run(self, requests: list[str]) -> list[bytes]:
        if not requests:
            return []
        for r in requests:
            if "\n" in r or r.startswith("#"):
                raise ValueError(f"not a single debugfs request: {r!r}")
        nonce = secrets.token_hex(16)
        script = "".join(f"#{nonce} {i}\n{r}\n" for i, r in enumerate(requests))
        script += f"#{nonce} end\n"
        proc = subprocess.run(
            [self.exe, "-f", "-", str(self.image)],
            input=script.encode(),
            capture_output=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBUGFS_PAGER": "__none__"},
            check=False,
        )
        err = proc.stderr.decode(errors="replace")
        if "while trying to open" in err or "while opening filesystem" in err:
            first = next((ln for ln in err.splitlines() if "open" in ln), err.strip())
            raise DiffError(f"{self.image}: not an ext2/3/4 file system debugfs can read ({first})")
        parts = proc.stdout.split(f"#{nonce} ".encode())
        if len(parts) != len(requests) + 2 or parts[-1] != b"end\n":
            raise DiffError(
                f"{self.image}: debugfs stopped early (exit {proc.returncode}): "
                f"{err.strip()[-300:]}"
            )
        out: list[bytes] = []
        for i, (r, part) in enumerate(zip(requests, parts[1:-1], strict=True)):
            echo = f"{i}\ndebugfs: {r}\n".encode()
            if not part.startswith(echo):
                raise DiffError(f"{self.image}: unexpected debugfs output for {r!r}")
            out.append(part[len(echo) :])
        return out


@dataclass(frozen=True)
class Geometry:
    """What the diff needs from the superblock and group descriptors."""

    block_size: int
    inode_size: int
    inodes_per_group: int
    inode_table_blocks: int  # per group
    inode_tables: tuple[int, ...]  # first block of each group's inode table

    @property
    def inodes_per_block(self) -> int:
        return self.block_size // self.inode_size


def _field(out: bytes, name: bytes) -> int:
    m = re.search(rb"^" + re.escape(name) + rb":\s+(\d+)", out, re.MULTILINE)
    if not m:
        raise DiffError(f"debugfs stats: no {name.decode()!r}")
    return int(m.group(1))


def parse_stats(out: bytes) -> Geometry:
    tables = [
        (int(g), int(t))
        for g, t in re.findall(rb"^ Group\s+(\d+): [^\n]*?inode table at (\d+)", out, re.MULTILINE)
    ]
    if not tables:
        raise DiffError("debugfs stats: no group descriptors")
    return Geometry(
        block_size=_field(out, b"Block size"),
        inode_size=_field(out, b"Inode size"),
        inodes_per_group=_field(out, b"Inodes per group"),
        inode_table_blocks=_field(out, b"Inode blocks per group"),
        inode_tables=tuple(t for _, t in sorted(tables)),
    )
