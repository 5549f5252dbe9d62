"""Who may use which bytes of a guest's log quota, and of the disk (docs/formats/session-log.md,
"Quota").

Records are sorted by who controls them. A guest controls its output and, on the honeypot
kernel, everything in its tty log (a subverted guest kernel can forge any tty-log record), so
neither may use the room kept for what clients typed through the daemon and for the daemon's
own events; output may not use the room kept for what the guest was seen to type and run. A
file's closing records (END, the notes that say what was dropped) are always written: they are
few and small, and without them a log could not say how it ended.

The same classes apply to the free space of the logs' filesystem: the writer stops each class
at a floor of free space, before the disk is full, so that the closing records still fit.
Sans-io apart from `DiskRoom.measure`, which calls statvfs (injectable).
"""

import os
import threading
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path

from warden.sessionlog import store as logstore

# The reserve is counted in records, not keystrokes: a shell reads what is typed one byte per
# read(2), and the tty log stores each read as a record of ~90 bytes (a line log's INPUT, ~60).
# quota/8 (at most 4 MiB) keeps ~23,000 logged keystrokes and execs after an output flood of a
# 64 MiB quota; quota/16 (at most 256 KiB) kept ~1,400.
RESERVE_SHARE = 8
RESERVE_MAX = 4 << 20
DISK_FLOOR_MAX = 8 << 20
DISK_FLOOR_SHARE = 64  # the floor is 1/64 of the filesystem, at most DISK_FLOOR_MAX


class Tier(IntEnum):
    """Who controls a record; a higher tier may use more of the quota and of the disk."""

    OUTPUT = 0  # what a guest prints: OUTPUT, TTYLOG output, the kernel log
    GUEST = 1  # what a guest was seen to type and run: TTYLOG keystrokes, EXEC, OPEN...
    HOST = 2  # what clients typed through the daemon (INPUT), the daemon's events
    CLOSING = 3  # END, daemon-detach, dropped/write-failed notes: always written


def reserve_for(quota: int) -> int:
    """Room kept above the output's limit (docs: quota/8, at most 4 MiB)."""
    return min(quota // RESERVE_SHARE, RESERVE_MAX)


def resume_margin(quota: int) -> int:
    """Once a class is dropped, it resumes only with this much room beyond the record: records
    of different sizes at the limit would otherwise start and stop it (and note it) each time."""
    return reserve_for(quota) // 8


def limit(quota: int, tier: Tier) -> int:
    """Bytes a guest's logs may reach with records of `tier`."""
    r = reserve_for(quota)
    if tier is Tier.OUTPUT:
        return quota - r
    if tier is Tier.GUEST:
        return quota - r // 2
    if tier is Tier.HOST:
        return quota
    return 1 << 62


class GuestUsage:
    """Bytes on disk of one guest's logs, against its quota (all lines, all boots)."""

    def __init__(self, logs_dir: Path, quota: int):
        self.dir = logs_dir
        self.quota = quota
        self.used = logstore.usage(logs_dir)
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.used += n

    def room(self, tier: Tier) -> int:
        return limit(self.quota, tier) - self.used


def disk_floor(fs_size: int, tier: Tier) -> int:
    """Free bytes the writer leaves on the logs' filesystem before it drops `tier`."""
    floor = min(fs_size // DISK_FLOOR_SHARE, DISK_FLOOR_MAX)
    if tier is Tier.OUTPUT:
        return floor
    if tier is Tier.GUEST:
        return floor * 3 // 4
    if tier is Tier.HOST:
        return floor // 2
    return 0


class DiskRoom:
    """The free space of one filesystem as the writer thread sees it.

    statvfs is read when first needed, again after every floor/2 bytes this writer put there
    (so space that other processes take is noticed soon), whenever a record would not fit
    (at most once per batch: `new_batch`), and after a failed write (`invalidate`).
    """

    def __init__(self, path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs):
        self.path = path
        self._statvfs = statvfs
        self.size = 0
        self.free = 0  # at the last measure, minus what this writer wrote since
        self.since = 0
        self.measured = False
        self.fresh = False  # measured during this batch

    def measure(self) -> None:
        try:
            st = self._statvfs(self.path)
        except OSError:
            # Not knowing is no reason to drop records: the write itself will tell.
            self.size, self.free = 0, 1 << 62
        else:
            self.size = st.f_blocks * st.f_frsize
            # f_bavail, not f_bfree: stop before unprivileged writers (jailed guests) hit ENOSPC.
            self.free = st.f_bavail * st.f_frsize
        self.since = 0
        self.measured = self.fresh = True

    def new_batch(self) -> None:
        self.fresh = False

    def invalidate(self) -> None:
        self.measured = False

    def room(self, tier: Tier) -> int:
        if not self.measured or self.since >= disk_floor(self.size, Tier.OUTPUT) // 2:
            self.measure()
        return self.free - disk_floor(self.size, tier)

    def fits(self, tier: Tier, n: int) -> bool:
        if tier is Tier.CLOSING:
            return True
        if n <= self.room(tier):
            return True
        if self.fresh:
            return False
        self.measure()  # others may have freed space since: look again before dropping
        return n <= self.room(tier)

    def took(self, n: int) -> None:
        self.free -= n
        self.since += n
