"""`inspect`: what a COW file holds and whether its backing file still matches."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.disk import backing, hostfile
from warden.disk.diff import display
from warden.uml import cow


@dataclass(frozen=True)
class Inspection:
    path: Path
    header: cow.CowHeader
    backing: backing.BackingState
    sectors_written: int | None  # None: the bitmap was not read (no backing file of its size)
    file_length: int  # st_size
    disk_usage: int  # bytes actually allocated
    in_use_by: int | None  # pid of the kernel holding the file
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def percent_written(self) -> float | None:
        total = self.header.sectors
        if self.sectors_written is None:
            return None
        return 100.0 * self.sectors_written / total if total else 0.0

    @property
    def bytes_written(self) -> int | None:
        if self.sectors_written is None:
            return None
        return self.sectors_written * self.header.sectorsize

    def as_json(self) -> dict[str, Any]:
        h, b = self.header, self.backing
        return {
            "path": str(self.path),
            "version": h.version,
            "layout": h.layout.value,
            "backing": {
                "path": os.fsdecode(h.backing),
                "checked_path": str(b.path),
                "named_by_header": b.named_ok,
                "exists": b.exists,
                "recorded_size": h.size,
                "actual_size": b.size,
                "size_ok": b.size_ok,
                "recorded_mtime": h.mtime,
                "actual_mtime": b.mtime,
                "mtime_ok": b.mtime_ok,
                "ok": b.ok,
            },
            "sector_size": h.sectorsize,
            "alignment": h.alignment,
            "sectors": h.sectors,
            "sectors_written": self.sectors_written,
            "bytes_written": self.bytes_written,
            "percent_written": None
            if self.percent_written is None
            else round(self.percent_written, 3),
            "bitmap_offset": h.bitmap_offset,
            "bitmap_length": h.bitmap_len,
            "data_offset": h.data_offset,
            "file_length": self.file_length,
            "disk_usage": self.disk_usage,
            "in_use_by": self.in_use_by,
            "warnings": list(self.warnings),
        }


def inspect(
    path: Path, backing_path: Path | None = None, recorded: backing.Recorded | None = None
) -> Inspection:
    """Read `path` (CowFormatError if it is not a valid COW file); never changes anything.

    The header is held against the backing file warden would use (backing.choose); the bitmap
    is read only when that file exists with the size the header records, which bounds it."""
    h, length = cow.read_header(path)
    state = backing.state(path, h, backing_path, recorded)
    warnings: list[str] = []
    if not state.named_ok and recorded is None:
        # (a machine's header may name the jail's /disk/base: its recorded base is what counts)
        warnings.append(f"the header names {display(h.backing)!r}, not {state.path}")
    if h.mapped_sectors < h.sectors:
        warnings.append(
            f"a {h.layout.value} header with {h.sectors} sectors has bits for only "
            f"{h.mapped_sectors} (the old rounding bug): the last sectors always read from "
            "the backing file"
        )
    if h.layout is cow.Layout.V3_BROKEN:
        warnings.append("header in the broken 64-bit v3 layout (written before 2006)")
    written: int | None = None
    if state.exists and state.size_ok:
        c = cow.open_cow(path, h.size)
        written = c.written()
        last = max((s + n for s, n in c.runs()), default=0)
        if last and c.length < h.data_offset + last * h.sectorsize:
            warnings.append(
                f"the data area is truncated: written sectors reach offset "
                f"{h.data_offset + last * h.sectorsize} but the file ends at {c.length}"
            )
    else:
        warnings.append(
            "the bitmap was not read: it is read only over a backing file of the size the "
            "header records"
        )
    return Inspection(
        path=path,
        header=h,
        backing=state,
        sectors_written=written,
        file_length=length,
        disk_usage=hostfile.disk_usage(path),
        in_use_by=hostfile.holder(path),
        warnings=tuple(warnings),
    )
