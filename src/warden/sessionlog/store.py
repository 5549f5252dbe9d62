"""Where session logs live, the HMAC key, and finding logs again (docs/formats/session-log.md).

Readers (`warden logs`, `warden replay`) work on the files directly, with or without a
daemon: logs are evidence and must stay readable when the daemon is gone.
"""

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warden import statefile
from warden.errors import NotFound, WardenError
from warden.paths import Layout
from warden.sessionlog import codec as sl

KEY_FILE = "session-log.key"
KEY_LEN = 32
# LINE-BOOT[.PART].wlog[.gz]
NAME = re.compile(r"^(con0|ssl\d{1,2}|tty)-(\d+)(?:\.(\d+))?\.wlog(\.gz)?$")


def key_path(layout: Layout) -> Path:
    return layout.keys / KEY_FILE


def load_key(layout: Layout, create: bool = False) -> bytes:
    """The home's HMAC key; made (32 random bytes, mode 0600) on first use if `create`."""
    path = key_path(layout)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise NotFound(
                f"{path}: no session-log key in this home (the daemon makes it when it first "
                "writes a log); is WARDEN_HOME right?"
            ) from None
        layout.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = statefile.create_once(path, os.urandom(KEY_LEN), 0o600)
    except PermissionError:
        raise WardenError(f"{path}: cannot read the session-log key (run as root)") from None
    if len(key) != KEY_LEN:
        raise WardenError(f"{path}: the session-log key is {len(key)} bytes, not {KEY_LEN}")
    return key


def log_name(line: str, boot: int, part: int = 1) -> str:
    return f"{line}-{boot}.wlog" if part == 1 else f"{line}-{boot}.{part}.wlog"


@dataclass(frozen=True)
class LogRef:
    """One session-log file."""

    machine: str
    line: str
    boot: int
    part: int
    path: Path
    archived: bool = False

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".gz")

    @property
    def label(self) -> str:
        p = f" part {self.part}" if self.part > 1 else ""
        a = " (archived)" if self.archived else ""
        return f"{self.machine} {self.line} boot {self.boot}{p}{a}"

    def is_live(self) -> bool:
        """True while a daemon holds the file open for writing (it keeps an exclusive flock)."""
        if self.compressed:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def parse_name(path: Path) -> tuple[str, int, int] | None:
    m = NAME.match(path.name)
    if not m:
        return None
    return m[1], int(m[2]), int(m[3] or 1)


def machine_dirs(layout: Layout) -> list[tuple[str, Path, bool]]:
    """(machine, logs dir, archived) for every guest and every archived guest."""
    out: list[tuple[str, Path, bool]] = []
    if layout.machines.is_dir():
        for d in sorted(layout.machines.iterdir()):
            if (d / "logs").is_dir():
                out.append((d.name, d / "logs", False))
    archive = layout.home / "archive"
    if archive.is_dir():
        for d in sorted(archive.iterdir()):
            name = d.name.rsplit("-", 1)[0] if re.search(r"-\d+$", d.name) else d.name
            if d.is_dir():
                out.append((name, d, True))
    return out


def logs_in(machine: str, d: Path, archived: bool) -> list[LogRef]:
    refs: dict[tuple[str, int, int], LogRef] = {}
    for p in d.iterdir():
        parsed = parse_name(p)
        if parsed is None:
            continue
        line, boot, part = parsed
        ref = LogRef(machine, line, boot, part, p, archived)
        other = refs.get(parsed)
        # Both FILE and FILE.gz: the .gz is complete (renamed after fsync); prefer it.
        if other is None or ref.compressed:
            refs[parsed] = ref
    return sorted(refs.values(), key=lambda r: (r.line, r.boot, r.part))


def find(
    layout: Layout,
    machine: str | None = None,
    line: str | None = None,
    boot: int | None = None,
    archived: bool = True,
) -> list[LogRef]:
    out: list[LogRef] = []
    for name, d, arch in machine_dirs(layout):
        if machine is not None and name != machine:
            continue
        if arch and not archived:
            continue
        for ref in logs_in(name, d, arch):
            if line is not None and ref.line != line:
                continue
            if boot is not None and ref.boot != boot:
                continue
            out.append(ref)
    out.sort(key=lambda r: (r.machine, r.archived, r.line, r.boot, r.part))
    return out


def select_one(layout: Layout, machine: str, line: str, boot: int | None) -> list[LogRef]:
    """The parts of one boot's log of `machine`'s `line` (latest boot if `boot` is None)."""
    refs = [r for r in find(layout, machine, line) if not r.archived]
    if not refs:
        refs = find(layout, machine, line)
    if not refs:
        known = sorted({(r.machine) for r in find(layout)})
        raise NotFound(
            f"no session logs of {machine} line {line} in {layout.home} "
            f"(guests with logs: {', '.join(known) or 'none'})"
        )
    if boot is None:
        boot = max(r.boot for r in refs)
    parts = [r for r in refs if r.boot == boot]
    if not parts:
        boots = sorted({r.boot for r in refs})
        raise NotFound(
            f"{machine} {line} has no log of boot {boot} (boots: {', '.join(map(str, boots))})"
        )
    return sorted(parts, key=lambda r: r.part)


# Also in a logs/ directory, and counted by the quota: the kernel's stdout/stderr per boot
# (warden.console.kernellog) and the manifest (warden.sessionlog.manifest).
KERNEL_LOG = re.compile(r"^kernel-(\d+)\.log$")
MANIFEST = "manifest.jsonl"


def counted(name: str) -> bool:
    """A file of a logs/ directory that the guest's quota counts."""
    return (
        NAME.match(name) is not None
        or name.endswith(".wlog.gz.tmp")
        or KERNEL_LOG.match(name) is not None
        or name == MANIFEST
    )


def usage(d: Path) -> int:
    """Bytes on disk of a guest's logs in one logs/ directory (what the quota counts)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for p in d.iterdir():
            if counted(p.name):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
    return total


def now_us() -> int:
    return time.time_ns() // 1000


@contextlib.contextmanager
def reading(ref: LogRef, key: bytes | None) -> Iterator[sl.LogReader]:
    """A reader over one file, closed when the block ends."""
    with sl.open_raw(ref.path) as f:
        yield sl.LogReader(f, key, str(ref.path))


def read_boot(
    layout: Layout, machine: str, line: str, boot: int | None, key: bytes | None = None
) -> tuple[list[sl.Record], dict[str, Any], list[str]]:
    """Every record of one boot's log of a line, all parts in order (the latest boot if `boot`
    is None): (records, the first part's header meta, a problem per part that stopped early).
    NotFound names the logs there are before anything else is read (the key included: by
    default the home's)."""
    refs = select_one(layout, machine, line, boot)
    if key is None:
        key = load_key(layout)
    records: list[sl.Record] = []
    meta: dict[str, Any] = {}
    problems: list[str] = []
    for ref in refs:
        with reading(ref, key) as reader:
            meta = meta or dict(reader.header.meta)
            records.extend(reader)
            if reader.state.problem:
                problems.append(
                    f"{ref.path}: {reader.state.problem}; showing the records before it"
                )
    return records, meta, problems
