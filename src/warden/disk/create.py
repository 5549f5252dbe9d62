"""`create`: a new, empty COW file over a base image, as the kernel would make it.

The kernel accepts it as its own (tests/disk/test_disk_kernel.py boots from one). Unlike the kernel,
which writes the header and then one byte at the end, warden writes the header into a
temporary file, sets the length with ftruncate (so the file takes one block on disk), and
publishes it with link(2): a crash leaves either no COW file or a whole one.
"""

import os
import stat
from pathlib import Path

from warden.disk import hostfile
from warden.disk.backing import kernel_path, mtime_seconds
from warden.disk.errors import BackingMissing, DiskError, OutputExists
from warden.uml import cow


def create(path: Path, backing: Path) -> cow.CowHeader:
    """Make the COW file `path` over `backing`; returns the header written."""
    try:
        st = os.stat(backing)
    except FileNotFoundError:
        raise BackingMissing(f"backing file {backing} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise DiskError(f"backing file {backing} is not a regular file (a disk image is needed)")
    if not os.access(backing, os.R_OK):
        raise DiskError(f"backing file {backing} is not readable")
    if st.st_size < cow.SECTOR_SIZE:
        raise DiskError(f"backing file {backing} is {st.st_size} bytes: not even one sector")
    if os.path.lexists(path):
        raise OutputExists(f"{path} already exists; warden never overwrites a COW file")
    directory = path.parent
    if not directory.is_dir():
        raise DiskError(f"{directory}: no such directory for the COW file")
    header = cow.new_header(kernel_path(backing), mtime_seconds(st), st.st_size)
    data = cow.encode_header(header)
    fd, temp = hostfile.temp_file(directory, path.name)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, header.file_size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    hostfile.publish(temp, path)
    hostfile.fsync_dir(directory)
    return header
