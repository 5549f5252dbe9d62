"""The UML copy-on-write (COW) disk format: header codec, sizes and the sector bitmap.

docs/formats/ubd-cow.md is the specification; every struct below quotes the C struct of
arch/um/drivers/cow_user.c it mirrors. `parse_header` and `encode_header` are pure (bytes in,
values out) and `open_cow` is the one bounds-checked reader of a COW file: both raise
CowFormatError naming the file, the field and what would be right.
"""

import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from warden.errors import WardenError

MAGIC = 0x4F4F4F4D  # COW_MAGIC, "OOOM" when stored big-endian
VERSION = 3  # COW_VERSION: the only version the kernel writes
COW_BITMAP = 0  # cow_format: the traditional sector bitmap, the only format defined
PATH_LEN_V1 = 256
PATH_LEN_V3 = 4096  # PATH_LEN_V2 == PATH_LEN_V3
SECTOR_SIZE = 512  # what the kernel writes (SECTOR_SIZE in ubd_kern.c)
ALIGNMENT = 4096  # what the kernel writes (its PAGE_SIZE)

# struct cow_header_v1 { __s32 magic; __s32 version; char backing_file[PATH_LEN_V1];
#                        time32_t mtime; __u64 size; __s32 sectorsize; } __attribute__((packed));
# Host byte order (little-endian on every x86 host that wrote one).
V1 = struct.Struct("<ii256sIQi")
# struct cow_header_v2 { __u32 magic; __u32 version; char backing_file[PATH_LEN_V2];
#                        time32_t mtime; __u64 size; __s32 sectorsize; } __attribute__((packed));
V2 = struct.Struct(">II4096sIQi")
# struct cow_header_v3 { __u32 magic; __u32 version; __u32 mtime; __u64 size; __u32 sectorsize;
#                        __u32 alignment; __u32 cow_format; char backing_file[PATH_LEN_V3];
#                      } __attribute__((packed));
V3 = struct.Struct(">IIIQIII4096s")
# struct cow_header_v3_broken { __u32 magic; __u32 version; __s64 mtime; __u64 size;
#     __u32 sectorsize; __u32 alignment; __u32 cow_format; char backing_file[PATH_LEN_V3]; };
# Not packed: 64-bit compilers laid it out with mtime at 8 and 4 bytes of tail padding. The
# writer stored htonl(mtime) in the 64-bit field, so bytes 8-11 are the big-endian mtime.
V3_BROKEN = struct.Struct(">III4xQIII4096s4x")
# The kernel reads sizeof(union cow_header) bytes: the largest of the four.
HEADER_READ = max(V1.size, V2.size, V3.size, V3_BROKEN.size)
# Offset of the bytes that tell a broken v3 header (its cow_format, always 0) from a correct
# one (the first bytes of an absolute backing path, never all zero).
_V3_PATH_OFFSET = 32


class CowFormatError(WardenError):
    """A file that is not a valid UML COW file (docs/formats/ubd-cow.md)."""


class Layout(Enum):
    V1 = "v1"
    V2 = "v2"
    V3 = "v3"
    V3_BROKEN = "v3-broken"


_HEADER_STRUCT = {
    Layout.V1: V1,
    Layout.V2: V2,
    Layout.V3: V3,
    Layout.V3_BROKEN: V3_BROKEN,
}
_PATH_LEN = {
    Layout.V1: PATH_LEN_V1,
    Layout.V2: PATH_LEN_V3,
    Layout.V3: PATH_LEN_V3,
    Layout.V3_BROKEN: PATH_LEN_V3,
}


def _round_up(x: int, align: int) -> int:
    return -(-x // align) * align


@dataclass(frozen=True)
class CowHeader:
    layout: Layout
    backing: bytes  # the backing file's path as stored (without the NUL)
    mtime: int  # backing file mtime, seconds (u32)
    size: int  # backing file size, bytes
    sectorsize: int = SECTOR_SIZE
    alignment: int = ALIGNMENT  # v1/v2 have none: the sector size is used
    cow_format: int = COW_BITMAP
    magic_le: bool = False  # the magic (and version) were stored little-endian

    @property
    def version(self) -> int:
        return {Layout.V1: 1, Layout.V2: 2}.get(self.layout, 3)

    @property
    def backing_path(self) -> Path:
        return Path(os.fsdecode(self.backing))

    @property
    def header_size(self) -> int:
        return _HEADER_STRUCT[self.layout].size

    @property
    def bitmap_offset(self) -> int:
        if self.layout in (Layout.V1, Layout.V2):
            return self.header_size
        return _round_up(self.header_size, self.alignment)

    @property
    def bitmap_len(self) -> int:
        if self.layout in (Layout.V1, Layout.V2):
            # The old rounding: devices whose sector count is not a multiple of 8 lose bits.
            return (self.size + self.sectorsize - 1) // (8 * self.sectorsize)
        sectors = -(-self.size // self.sectorsize)  # DIV_ROUND(size, sectorsize)
        return -(-sectors // 8)

    @property
    def data_offset(self) -> int:
        align = self.sectorsize if self.layout in (Layout.V1, Layout.V2) else self.alignment
        return _round_up(self.bitmap_offset + self.bitmap_len, align)

    @property
    def sectors(self) -> int:
        """Whole sectors of the guest's disk (the block layer drops a partial last sector)."""
        return self.size // self.sectorsize

    @property
    def mapped_sectors(self) -> int:
        """Sectors that have a bit: all of them, except after the v1/v2 rounding bug."""
        return min(self.sectors, self.bitmap_len * 8)

    @property
    def file_size(self) -> int:
        """The length of a complete COW file (what the kernel makes)."""
        return self.data_offset + self.size


# Where each layout keeps the fields a rebase changes: (path offset, mtime offset, mtime format).
_FIELDS = {
    Layout.V1: (8, 264, "<I"),
    Layout.V2: (8, 4104, ">I"),
    Layout.V3: (32, 8, ">I"),
    Layout.V3_BROKEN: (36, 8, ">I"),
}


def patch_header(raw: bytes, old: CowHeader, backing: bytes, mtime: int) -> bytes:
    """`raw` (the header as stored) with a new backing path and mtime, other bytes untouched.

    The kernel leaves uninitialised memory after the path's NUL (its header buffer comes from
    kmalloc); those bytes mean nothing and are kept, so that only bytes that change are written.
    """
    limit = _PATH_LEN[old.layout]
    if not backing or b"\0" in backing or len(backing) >= limit:
        raise CowFormatError(
            f"backing file path of {len(backing)} bytes does not fit a {old.layout.value} "
            f"header: it must be 1 to {limit - 1} bytes without NUL"
        )
    path_at, mtime_at, mtime_fmt = _FIELDS[old.layout]
    out = bytearray(raw[: old.header_size])
    # the new path, its NUL, and zeros over whatever is left of a longer old path
    span = max(len(backing), len(old.backing)) + 1
    out[path_at : path_at + span] = backing.ljust(span, b"\0")
    struct.pack_into(mtime_fmt, out, mtime_at, mtime & 0xFFFFFFFF)
    return bytes(out)


def new_header(backing: bytes, mtime: int, size: int) -> CowHeader:
    """A version 3 header as the kernel writes it (512-byte sectors, 4 KiB alignment)."""
    return CowHeader(layout=Layout.V3, backing=backing, mtime=mtime & 0xFFFFFFFF, size=size)


def _path_field(raw: bytes, source: str, offset: int) -> bytes:
    end = raw.find(b"\0")
    if end < 0:
        raise CowFormatError(
            f"{source}: the backing file path at offset {offset} has no terminating NUL "
            f"within its {len(raw)} bytes"
        )
    if end == 0:
        raise CowFormatError(f"{source}: the backing file path at offset {offset} is empty")
    return raw[:end]


def _check_values(h: CowHeader, source: str) -> None:
    ss = h.sectorsize
    if ss < 512 or ss > 65536 or ss & (ss - 1):
        raise CowFormatError(
            f"{source}: sector size {ss} in the header; expected a power of two from 512 to "
            "65536 (the kernel writes 512)"
        )
    al = h.alignment
    if al <= 0 or al > (1 << 20) or al & (al - 1):
        raise CowFormatError(
            f"{source}: alignment {al} in the header; expected a power of two up to 1 MiB "
            "(the kernel writes 4096)"
        )
    if h.cow_format != COW_BITMAP:
        raise CowFormatError(
            f"{source}: cow_format {h.cow_format} in the header; only {COW_BITMAP} "
            "(the sector bitmap) is defined"
        )
    if h.size >= 1 << 63:
        raise CowFormatError(f"{source}: backing size {h.size} in the header is not a file size")


def parse_header(data: bytes, source: str = "COW file") -> CowHeader:
    """The header at the start of `data` (at least HEADER_READ bytes when the file has them)."""
    if len(data) < 8:
        raise CowFormatError(
            f"{source}: {len(data)} bytes is too short for a COW header (magic and version "
            "need 8 bytes; a version 3 header is 4128)"
        )
    magic_be, version_be = struct.unpack_from(">II", data)
    magic_le_value, version_le = struct.unpack_from("<II", data)
    if magic_be == MAGIC:
        magic_le, version = False, version_be
    elif magic_le_value == MAGIC:
        magic_le, version = True, version_le
    else:
        raise CowFormatError(
            f"{source}: not a UML COW file: magic {data[:4].hex()} at offset 0, expected "
            f"{MAGIC:08x} ('OOOM')"
        )
    if version == 1:
        layout = Layout.V1
    elif version == 2:
        layout = Layout.V2
    elif version == 3:
        broken = len(data) >= _V3_PATH_OFFSET + 4 and not any(
            data[_V3_PATH_OFFSET : _V3_PATH_OFFSET + 4]
        )
        layout = Layout.V3_BROKEN if broken else Layout.V3
    else:
        raise CowFormatError(
            f"{source}: unknown COW version {version}; versions 1, 2 and 3 exist "
            "(the kernel writes 3)"
        )
    st = _HEADER_STRUCT[layout]
    if len(data) < st.size:
        raise CowFormatError(
            f"{source}: truncated header: {len(data)} bytes, a {layout.value} header is {st.size}"
        )
    if layout is Layout.V1:
        _, _, path, mtime, size, ss = V1.unpack_from(data)
        h = CowHeader(layout, _path_field(path, source, 8), mtime, size, ss, ss, 0, magic_le)
    elif layout is Layout.V2:
        _, _, path, mtime, size, ss = V2.unpack_from(data)
        h = CowHeader(layout, _path_field(path, source, 8), mtime, size, ss, ss, 0, magic_le)
    else:
        _, _, mtime, size, ss, align, fmt, path = st.unpack_from(data)
        offset = 36 if layout is Layout.V3_BROKEN else 32
        h = CowHeader(
            layout, _path_field(path, source, offset), mtime, size, ss, align, fmt, magic_le
        )
    _check_values(h, source)
    return h


def encode_header(h: CowHeader) -> bytes:
    """The on-disk bytes of `h` (exactly `h.header_size` of them)."""
    limit = _PATH_LEN[h.layout]
    if len(h.backing) >= limit or b"\0" in h.backing or not h.backing:
        raise CowFormatError(
            f"backing file path of {len(h.backing)} bytes does not fit a {h.layout.value} "
            f"header: it must be 1 to {limit - 1} bytes without NUL"
        )
    head = struct.pack("<II" if h.magic_le else ">II", MAGIC, h.version)
    if h.layout is Layout.V1:
        return head + V1.pack(MAGIC, 1, h.backing, h.mtime, h.size, h.sectorsize)[8:]
    if h.layout is Layout.V2:
        return head + V2.pack(MAGIC, 2, h.backing, h.mtime, h.size, h.sectorsize)[8:]
    st = _HEADER_STRUCT[h.layout]
    body = st.pack(MAGIC, 3, h.mtime, h.size, h.sectorsize, h.alignment, h.cow_format, h.backing)
    return head + body[8:]


# --- the sector bitmap --------------------------------------------------------------------

_NONZERO = re.compile(rb"[^\x00]+")
_FULL = re.compile(rb"\xff+")


def written_runs(bitmap: bytes, nsectors: int) -> Iterator[tuple[int, int]]:
    """(first sector, count) of each maximal run of set bits below `nsectors`, in order.

    Bit i is bit i % 8 (least significant first) of byte i // 8. Zero bytes and 0xff bytes are
    skipped and taken whole by regular expressions, so the cost is in the mixed bytes only.
    """
    start = end = -1
    view = bytes(bitmap[: (nsectors + 7) // 8])
    for m in _NONZERO.finditer(view):
        i, stop = m.start(), m.end()
        while i < stop:
            if view[i] == 0xFF:
                full = _FULL.match(view, i, stop)
                j = full.end() if full else i + 1
                spans: list[tuple[int, int]] = [(i * 8, j * 8)]
                i = j
            else:
                byte, base = view[i], i * 8
                spans = [(base + b, base + b + 1) for b in range(8) if byte >> b & 1]
                i += 1
            for s, e in spans:
                e = min(e, nsectors)
                if s >= e:
                    continue
                if s == end:
                    end = e
                    continue
                if start >= 0:
                    yield start, end - start
                start, end = s, e
    if start >= 0:
        yield start, end - start


def count_written(bitmap: bytes, nsectors: int) -> int:
    """How many of the first `nsectors` bits are set."""
    nbytes = (nsectors + 7) // 8
    value = int.from_bytes(bitmap[:nbytes], "little")
    return (value & ((1 << nsectors) - 1)).bit_count()


def mark(bitmap: bytearray, first: int, count: int) -> None:
    """Set the bits of sectors first .. first+count-1 (as the kernel does on a write)."""
    for i in range(first, first + count):
        bitmap[i // 8] |= 1 << (i % 8)


# --- reading a COW file -------------------------------------------------------------------


@dataclass(frozen=True)
class CowFile:
    """A COW file's header and bitmap, read and checked once."""

    path: Path
    header: CowHeader
    bitmap: bytes
    length: int  # the file's length (st_size)

    def runs(self) -> Iterator[tuple[int, int]]:
        return written_runs(self.bitmap, self.header.mapped_sectors)

    def written(self) -> int:
        return count_written(self.bitmap, self.header.mapped_sectors)


def read_header_bytes(fd: int) -> bytes:
    return os.pread(fd, HEADER_READ, 0)


def _open(path: Path) -> tuple[int, int]:
    """An fd of the regular file at `path` and its length."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CowFormatError(f"{path}: no such COW file") from None
    except PermissionError:
        raise CowFormatError(f"{path}: permission denied") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CowFormatError(f"{path}: is {kind}, not a COW file")
    return fd, st.st_size


def read_header(path: Path) -> tuple[CowHeader, int]:
    """The header of the COW file at `path` and the file's length, and nothing else.

    At most HEADER_READ bytes are read, whatever the header claims: a guest can write its own
    COW file, so nothing here is trusted until a caller has held it against a file it chose.
    """
    fd, length = _open(path)
    try:
        return parse_header(read_header_bytes(fd), str(path)), length
    finally:
        os.close(fd)


def open_cow(path: Path, disk_size: int) -> CowFile:
    """Read and check the header and the bitmap of the COW file at `path`.

    `disk_size` is the length of the backing file the caller has chosen and checked: the header
    must record exactly that size, so the bitmap read is bounded by a real file's size and never
    by a number the guest wrote (a header claiming 2**60 bytes would otherwise ask for a bitmap
    of petabytes, or of as many gigabytes as the sparse COW file is long).
    """
    fd, length = _open(path)
    try:
        header = parse_header(read_header_bytes(fd), str(path))
        if header.size != disk_size:
            raise CowFormatError(
                f"{path}: the header records a {header.size}-byte backing file, but the backing "
                f"file is {disk_size} bytes: not read further"
            )
        end = header.bitmap_offset + header.bitmap_len
        if length < end:
            raise CowFormatError(
                f"{path}: the bitmap is shorter than the size implies: a {header.size}-byte "
                f"backing file needs a {header.bitmap_len}-byte bitmap ending at offset {end}, "
                f"but the file is {length} bytes long (truncated?)"
            )
        bitmap = os.pread(fd, header.bitmap_len, header.bitmap_offset)
        if len(bitmap) != header.bitmap_len:
            raise CowFormatError(f"{path}: short read of the bitmap ({len(bitmap)} bytes)")
    finally:
        os.close(fd)
    return CowFile(path=path, header=header, bitmap=bitmap, length=length)
