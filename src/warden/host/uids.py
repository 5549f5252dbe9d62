"""One host uid (and the gid of the same number) per jailed guest, unique on the whole host
while the guest exists.

The range comes from the fleet file ([host] uid_base, uid_count). Two warden homes on one host
may share a range, so a claim is recorded outside any home: one file per uid in
WARDEN_CACHE/uids/ (the cache is shared by every home of the host), holding the home and the
machine that own it, written under an flock. A claim is stale, and its uid free again, when
its machine's directory (HOME/machines/NAME) no longer exists: `warden destroy` removes it.
Two more checks keep a uid from ever being shared even if the claims were wiped: a uid that
any running process uses, or that /etc/passwd names, is never handed out.
"""

import contextlib
import fcntl
import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

from warden import statefile
from warden.errors import WardenError
from warden.paths import Layout


class UidsExhausted(WardenError):
    pass


def claims_dir(layout: Layout) -> Path:
    return layout.cache / "uids"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, str] | None:
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(raw, dict) or not {"home", "machine"} <= set(raw):
        return None
    return {"home": str(raw["home"]), "machine": str(raw["machine"])}


def _stale(claim: dict[str, str]) -> bool:
    return not (Path(claim["home"]) / "machines" / claim["machine"]).is_dir()


def uids_in_use_by_processes() -> set[int]:
    """Real, effective, saved and filesystem uids of every process on the host."""
    used: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        used.update(int(x) for x in line.split()[1:])
                        break
        except OSError:
            continue  # the process ended meanwhile
    return used


def _in_passwd(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def allocate(layout: Layout, machine: str, base: int, count: int, current: int | None) -> int:
    """The uid of `machine` in this home: `current` if it is still in range and ours, else the
    lowest free one. UidsExhausted when every uid of the range is taken."""
    directory = claims_dir(layout)
    me = {"home": str(layout.home), "machine": machine}
    with _locked(directory):
        busy = uids_in_use_by_processes()
        candidates = list(range(base, base + count))
        if current is not None and base <= current < base + count:
            candidates.insert(0, current)
        holders: list[str] = []
        for uid in candidates:
            path = directory / str(uid)
            claim = _read(path)
            ours = claim == me
            if claim is not None and not ours and not _stale(claim):
                holders.append(f"{uid} by {claim['machine']} in {claim['home']}")
                continue
            if not ours and (uid in busy or _in_passwd(uid)):
                holders.append(f"{uid} by a host process or user")
                continue
            if not ours:  # a claim already ours stays as it is (no write, no fsync per boot)
                statefile.write_json(path, me, mode=0o644)
            _forget_others(directory, me, uid)
            return uid
    taken = "; ".join(holders[:3]) + ("; ..." if len(holders) > 3 else "")
    raise UidsExhausted(
        f"fleet [host] uid_base = {base}, uid_count = {count}: every uid of the range is taken "
        f"({taken}), so guest {machine!r} cannot get one "
        "of its own. Raise uid_count, move uid_base to a free range, or destroy guests that are "
        "no longer needed (warden destroy NAME)."
    )


def _forget_others(directory: Path, me: dict[str, str], keep: int) -> None:
    """A guest that moved to another uid (the range changed) releases its older claims."""
    for path in directory.iterdir():
        if path.name.isdigit() and int(path.name) != keep and _read(path) == me:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def owner(layout: Layout, uid: int) -> dict[str, str] | None:
    """Who claims `uid` (for `warden jail audit`), or None."""
    return _read(claims_dir(layout) / str(uid))
