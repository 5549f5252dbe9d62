"""What can go wrong with a disk operation; each message names the file and the way out."""

from warden.errors import Conflict, WardenError


class DiskError(WardenError):
    """A disk operation cannot be done as asked."""


class BackingMissing(DiskError):
    """The backing file a COW header records (or the one given) does not exist."""


class BackingMismatch(DiskError):
    """The backing file's size or mtime differs from the COW header: not the same image."""


class DiskFull(DiskError):
    """The output's file system filled up; the partial output was removed."""


class InUse(DiskError, Conflict):
    """A running kernel holds the file (it has an fcntl lock on it)."""


class OutputExists(DiskError, Conflict):
    """warden never overwrites an existing file."""


class SnapshotError(DiskError):
    """A snapshot is missing, malformed, or cannot be taken or restored."""


class DiffError(DiskError):
    """The guest's file system cannot be read (not ext2/3/4, or debugfs failed)."""
