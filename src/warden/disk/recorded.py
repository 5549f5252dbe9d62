"""Is a COW file a machine's disk, and which base image did warden record for that machine?

A machine's disk is WARDEN_HOME/machines/NAME/disk.cow, and a snapshot of it is
WARDEN_HOME/machines/NAME/snapshots/SNAP/disk.cow (docs/formats/ubd-cow.md, "Snapshots"). For
such a file the backing file is never the one its header names (the guest can write the header)
but the base warden recorded in the machines table of warden.db at create and reset. A file
elsewhere is a bare COW file: its header, or the backing file the user names, decides.
"""

import os
from pathlib import Path

from warden.disk.backing import Recorded
from warden.disk.errors import DiskError
from warden.spec.fleet import MACHINE_NAME
from warden.store import Store

DISK_NAME = "disk.cow"


def machine_of(cow_path: Path) -> tuple[Path, str] | None:
    """(WARDEN_HOME, machine name) if `cow_path` is a machine's disk or a snapshot of one."""
    real = Path(os.path.realpath(cow_path))
    if real.name != DISK_NAME:
        return None
    parts = real.parts
    # the machine's name is the 2nd last part (machines/NAME/disk.cow) or the 4th last
    # (machines/NAME/snapshots/SNAP/disk.cow)
    for at in (2, 4):
        if len(parts) < at + 2 or (at == 4 and parts[-3] != "snapshots"):
            continue
        name, machines = parts[-at], parts[-at - 1]
        if machines != "machines" or not MACHINE_NAME.fullmatch(name):
            continue
        home = Path(*parts[: -at - 1])
        if (home / "warden.db").is_file():
            return home, name
    return None


def lookup(cow_path: Path) -> Recorded | None:
    """The recorded base of the machine whose disk `cow_path` is; None for a bare COW file.

    Raises DiskError for a machine's disk whose base warden has no record of: nothing else may
    stand in for it."""
    found = machine_of(cow_path)
    if found is None:
        return None
    home, name = found
    store = Store(home / "warden.db")
    try:
        row = store.machine(name)
    finally:
        store.close()
    if row is None or not row.base:
        raise DiskError(
            f"{cow_path} is a disk of machine {name!r} in {home}, but warden.db has no base "
            f"image recorded for it: refusing to trust the path its header names. "
            f"`warden reset {name}` makes a new disk over the image's current build"
        )
    return Recorded(name, Path(row.base))
