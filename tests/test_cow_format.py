"""The COW codec (warden.uml.cow) against hand-made byte vectors of every layout, a header the
kernel wrote, and truncated, oversized and corrupted input (docs/formats/ubd-cow.md)."""

import os
import random
import struct
from pathlib import Path

import pytest

from warden.errors import WardenError
from warden.uml import cow
from warden.uml.cow import CowFormatError, CowHeader, Layout

PATH = b"/b"


def _field(text: bytes, width: int) -> bytes:
    return text + b"\0" * (width - len(text))


# Hand-written on-disk bytes of each layout for backing "/b", mtime 0x01020304, size 1 MiB.
V3_VECTOR = bytes.fromhex(
    "4f4f4f4d"  # magic, big-endian
    "00000003"  # version
    "01020304"  # mtime
    "0000000000100000"  # size
    "00000200"  # sector size 512
    "00001000"  # alignment 4096
    "00000000"  # cow_format: bitmap
) + _field(PATH, 4096)
V2_VECTOR = (
    bytes.fromhex("4f4f4f4d00000002")
    + _field(PATH, 4096)
    + bytes.fromhex("01020304000000000010000000000200")
)
V1_VECTOR = (
    bytes.fromhex("4d4f4f4f01000000")  # little-endian magic and version
    + _field(PATH, 256)
    + bytes.fromhex("04030201000010000000000000020000")
)
V3_BROKEN_VECTOR = (
    bytes.fromhex(
        "4f4f4f4d00000003"
        "0102030400000000"  # htonl(mtime) stored in a 64-bit time_t
        "0000000000100000"
        "00000200"
        "00001000"
        "00000000"  # cow_format, where a packed v3 header has the path
    )
    + _field(PATH, 4096)
    + b"\0" * 4  # tail padding
)

# The first 4128 bytes of a COW file Debian's linux.uml 6.1.176 made over a 256 MiB image
# (ubd0=g.cow,/tmp/warden-test-images/images/minimal-af2ec532e64b.img): note the stray bytes
# after the path's NUL at offsets 4097-4099 (its header buffer is not cleared).
KERNEL_PATH = b"/tmp/warden-test-images/images/minimal-af2ec532e64b.img"
KERNEL_HEADER = bytearray(
    bytes.fromhex("4f4f4f4d000000036b0c85b90000000010000000000002000000100000000000")
    + _field(KERNEL_PATH, 4096)
)
KERNEL_HEADER[4097:4100] = bytes.fromhex("604b8a")


def _header(layout: Layout) -> CowHeader:
    align = 4096 if layout in (Layout.V3, Layout.V3_BROKEN) else 512
    return CowHeader(layout, PATH, 0x01020304, 1 << 20, 512, align, 0, layout is Layout.V1)


VECTORS = {
    Layout.V1: V1_VECTOR,
    Layout.V2: V2_VECTOR,
    Layout.V3: V3_VECTOR,
    Layout.V3_BROKEN: V3_BROKEN_VECTOR,
}


@pytest.mark.parametrize("layout", list(Layout))
def test_vector_decodes_and_encodes(layout: Layout) -> None:
    vector = VECTORS[layout]
    header = _header(layout)
    assert cow.parse_header(vector) == header
    assert cow.encode_header(header) == vector
    assert len(vector) == header.header_size


def test_struct_sizes_match_the_c_structs() -> None:
    # sizeof() of the C structs in cow_user.c on x86_64
    assert (cow.V1.size, cow.V2.size, cow.V3.size, cow.V3_BROKEN.size) == (280, 4120, 4128, 4136)
    assert cow.HEADER_READ == 4136


def test_sizes_of_a_kernel_made_file() -> None:
    h = cow.parse_header(bytes(KERNEL_HEADER))
    assert (h.version, h.layout, h.backing, h.mtime) == (3, Layout.V3, KERNEL_PATH, 0x6B0C85B9)
    assert (h.size, h.sectorsize, h.alignment) == (256 << 20, 512, 4096)
    # bitmap right after the header rounded up to the alignment; data aligned after the bitmap
    assert (h.bitmap_offset, h.bitmap_len, h.data_offset) == (8192, 65536, 73728)
    assert h.file_size == 268509184  # what `ls -l` showed for the kernel's file


def test_stray_bytes_after_the_path_are_ignored_and_kept() -> None:
    raw = bytes(KERNEL_HEADER)
    h = cow.parse_header(raw)
    assert cow.encode_header(h) == raw[:4097] + b"\0\0\0" + raw[4100:]
    # patching with the same values changes nothing, stray bytes included
    assert cow.patch_header(raw, h, h.backing, h.mtime) == raw
    new = cow.patch_header(raw, h, b"/x/y.img", 7)
    changed = [i for i in range(len(raw)) if raw[i] != new[i]]
    assert changed and max(changed) < 32 + len(KERNEL_PATH) + 1
    assert min(changed) == 8  # the mtime field
    again = cow.parse_header(new)
    assert (again.backing, again.mtime, again.size) == (b"/x/y.img", 7, h.size)
    assert new[4097:4100] == raw[4097:4100]


@pytest.mark.parametrize("layout", list(Layout))
def test_patch_header_every_layout(layout: Layout) -> None:
    vector = VECTORS[layout]
    h = cow.parse_header(vector)
    new = cow.parse_header(cow.patch_header(vector, h, b"/longer/path.img", 99))
    assert new == CowHeader(
        layout, b"/longer/path.img", 99, h.size, h.sectorsize, h.alignment, 0, h.magic_le
    )
    shorter = cow.patch_header(cow.encode_header(new), new, b"/s", 1)
    assert cow.parse_header(shorter).backing == b"/s"
    # nothing of the longer path is left after the new NUL
    path_at = {Layout.V1: 8, Layout.V2: 8, Layout.V3: 32, Layout.V3_BROKEN: 36}[layout]
    assert shorter[path_at : path_at + 20] == b"/s" + b"\0" * 18


def test_broken_layout_is_told_by_the_zero_bytes_at_offset_32() -> None:
    assert cow.parse_header(V3_BROKEN_VECTOR).layout is Layout.V3_BROKEN
    h = cow.parse_header(V3_BROKEN_VECTOR)
    assert (h.bitmap_offset, h.mtime) == (8192, 0x01020304)  # round_up(4136, 4096)
    # a packed v3 header's path never starts with four zero bytes
    assert cow.parse_header(V3_VECTOR).layout is Layout.V3


def test_little_endian_magic_v3_keeps_big_endian_fields() -> None:
    raw = bytearray(V3_VECTOR)
    raw[0:8] = struct.pack("<II", cow.MAGIC, 3)
    h = cow.parse_header(bytes(raw))
    assert h.magic_le and h.mtime == 0x01020304 and h.size == 1 << 20
    assert cow.encode_header(h) == bytes(raw)


def test_v1_v2_rounding_bug_drops_bits_of_the_last_sectors() -> None:
    # 2051 sectors: (size + 511) // 4096 = 256 bitmap bytes = 2048 bits
    size = (1 << 20) + 3 * 512
    for layout in (Layout.V1, Layout.V2):
        h = CowHeader(layout, PATH, 0, size, 512, 512)
        assert (h.sectors, h.bitmap_len, h.mapped_sectors) == (2051, 256, 2048)
    h3 = CowHeader(Layout.V3, PATH, 0, size)
    assert (h3.bitmap_len, h3.mapped_sectors) == (257, 2051)


def test_oversized_input_is_fine() -> None:
    assert cow.parse_header(V3_VECTOR + os.urandom(5000)) == _header(Layout.V3)


@pytest.mark.parametrize("n", [0, 4, 7])
def test_too_short_for_magic_and_version(n: int) -> None:
    with pytest.raises(CowFormatError, match="too short"):
        cow.parse_header(V3_VECTOR[:n], "x.cow")


@pytest.mark.parametrize(
    ("vector", "n"),
    [(V3_VECTOR, 8), (V3_VECTOR, 100), (V3_VECTOR, 4127), (V2_VECTOR, 4119), (V1_VECTOR, 279)],
)
def test_truncated_header(vector: bytes, n: int) -> None:
    with pytest.raises(CowFormatError, match=r"x\.cow: truncated header"):
        cow.parse_header(vector[:n], "x.cow")


def test_wrong_magic() -> None:
    with pytest.raises(CowFormatError, match="x.cow: not a UML COW file: magic 51464900"):
        cow.parse_header(b"QFI\0" + V3_VECTOR[4:], "x.cow")
    assert issubclass(CowFormatError, WardenError)


@pytest.mark.parametrize("version", [0, 4, 0x01000000 + 3])
def test_unknown_version(version: int) -> None:
    raw = V3_VECTOR[:4] + struct.pack(">I", version) + V3_VECTOR[8:]
    with pytest.raises(CowFormatError, match=f"unknown COW version {version}"):
        cow.parse_header(raw, "x.cow")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (20, 0, "sector size 0"),
        (20, 1000, "sector size 1000"),
        (24, 0, "alignment 0"),
        (24, 3000, "alignment 3000"),
        (28, 1, "cow_format 1"),
    ],
)
def test_corrupted_fields(offset: int, value: int, message: str) -> None:
    raw = bytearray(V3_VECTOR)
    struct.pack_into(">I", raw, offset, value)
    with pytest.raises(CowFormatError, match=message):
        cow.parse_header(bytes(raw), "x.cow")


def test_path_without_nul_or_empty() -> None:
    raw = bytearray(V3_VECTOR)
    raw[32:] = b"/" * 4096
    with pytest.raises(CowFormatError, match="no terminating NUL"):
        cow.parse_header(bytes(raw), "x.cow")
    v2 = bytearray(V2_VECTOR)
    v2[8:10] = b"\0\0"
    with pytest.raises(CowFormatError, match="path at offset 8 is empty"):
        cow.parse_header(bytes(v2), "x.cow")


def test_encode_refuses_paths_that_do_not_fit() -> None:
    with pytest.raises(CowFormatError, match="1 to 255 bytes"):
        cow.encode_header(CowHeader(Layout.V1, b"/" + b"a" * 255, 0, 512, 512, 512))
    with pytest.raises(CowFormatError, match="1 to 4095 bytes"):
        cow.encode_header(CowHeader(Layout.V3, b"/" + b"a" * 4095, 0, 512))
    cow.encode_header(CowHeader(Layout.V3, b"/" + b"a" * 4094, 0, 512))


# --- the bitmap ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hexmap", "nsectors", "runs"),
    [
        ("", 0, []),
        ("00000000", 32, []),
        ("01", 8, [(0, 1)]),
        ("80", 8, [(7, 1)]),
        ("80", 7, []),  # bits past the disk's end are ignored
        ("f0ff0f", 24, [(4, 16)]),
        ("ffffffff", 30, [(0, 30)]),
        ("5500ff01", 32, [(0, 1), (2, 1), (4, 1), (6, 1), (16, 9)]),
        ("00c0ff03", 32, [(14, 12)]),
        ("ff00ff", 24, [(0, 8), (16, 8)]),
    ],
)
def test_written_runs_vectors(hexmap: str, nsectors: int, runs: list[tuple[int, int]]) -> None:
    bitmap = bytes.fromhex(hexmap)
    assert list(cow.written_runs(bitmap, nsectors)) == runs
    assert cow.count_written(bitmap, nsectors) == sum(n for _, n in runs)


def _naive_runs(bitmap: bytes, n: int) -> list[tuple[int, int]]:
    bits = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(n)]
    out: list[tuple[int, int]] = []
    for i, b in enumerate(bits):
        if b and out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        elif b:
            out.append((i, 1))
    return out


def test_written_runs_against_a_naive_reading() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        nbytes = rng.randint(1, 64)
        # mixtures of empty, full and random bytes, as real bitmaps have
        bitmap = bytes(rng.choice([0, 0, 0xFF, 0xFF, rng.randrange(256)]) for _ in range(nbytes))
        n = rng.randint(0, nbytes * 8)
        assert list(cow.written_runs(bitmap, n)) == _naive_runs(bitmap, n)


def test_mark_sets_the_bits_the_kernel_would() -> None:
    bitmap = bytearray(4)
    cow.mark(bitmap, 3, 10)
    assert bitmap.hex() == "f81f0000"
    assert list(cow.written_runs(bitmap, 32)) == [(3, 10)]


# --- reading files ------------------------------------------------------------------------


def _write_cow(path: Path, header: CowHeader, length: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(cow.encode_header(header))
        f.truncate(header.file_size if length is None else length)


def test_open_cow_reads_header_and_bitmap(tmp_path: Path) -> None:
    h = cow.new_header(b"/base.img", 5, 64 << 20)
    path = tmp_path / "a.cow"
    _write_cow(path, h)
    with open(path, "r+b") as f:
        f.seek(h.bitmap_offset + 1)
        f.write(b"\x03")
    c = cow.open_cow(path, 64 << 20)
    assert c.header == h and c.length == h.file_size
    assert list(c.runs()) == [(8, 2)] and c.written() == 2


def test_bitmap_shorter_than_the_size_implies(tmp_path: Path) -> None:
    h = cow.new_header(b"/base.img", 5, 64 << 20)  # 16 KiB bitmap at 8192
    path = tmp_path / "short.cow"
    _write_cow(path, h, length=h.bitmap_offset + 100)
    with pytest.raises(CowFormatError, match="bitmap is shorter than the size implies"):
        cow.open_cow(path, 64 << 20)


def test_open_cow_refuses_missing_and_non_files(tmp_path: Path) -> None:
    for read in (cow.read_header, lambda p: cow.open_cow(p, 1 << 20)):
        with pytest.raises(CowFormatError, match="no such COW file"):
            read(tmp_path / "nope.cow")
        with pytest.raises(CowFormatError, match="is a directory"):
            read(tmp_path)
        (tmp_path / "empty.cow").write_bytes(b"")
        with pytest.raises(CowFormatError, match="too short"):
            read(tmp_path / "empty.cow")
