"""`inspect`: what a COW file holds and whether its backing file still matches."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.disk import backing, hostfile
from warden.uml import cow


@dataclass(frozen=True)
class Inspection:
    path: Path
    header: cow.CowHeader
    backing: backing.BackingState
    sectors_written: int
    file_length: int  # st_size
    disk_usage: int  # bytes actually allocated
    in_use_by: int | None  # pid of the kernel holding the file
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def percent_written(self) -> float:
        total = self.header.sectors
        return 100.0 * self.sectors_written / total if total else 0.0

    @property
    def bytes_written(self) -> int:
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
            "percent_written": round(self.percent_written, 3),
            "bitmap_offset": h.bitmap_offset,
            "bitmap_length": h.bitmap_len,
            "data_offset": h.data_offset,
            "file_length": self.file_length,
            "disk_usage": self.disk_usage,
            "in_use_by": self.in_use_by,
            "warnings": list(self.warnings),
        }


def inspect(path: Path, backing_path: Path | None = None) -> Inspection:
    """Read `path` (CowFormatError if it is not a valid COW file); never changes anything."""
    c = cow.open_cow(path)
    h = c.header
    warnings: list[str] = []
    if h.mapped_sectors < h.sectors:
        warnings.append(
            f"a {h.layout.value} header with {h.sectors} sectors has bits for only "
            f"{h.mapped_sectors} (the old rounding bug): the last sectors always read from "
            "the backing file"
        )
    if h.layout is cow.Layout.V3_BROKEN:
        warnings.append("header in the broken 64-bit v3 layout (written before 2006)")
    last = max((s + n for s, n in c.runs()), default=0)
    if last and c.length < h.data_offset + last * h.sectorsize:
        warnings.append(
            f"the data area is truncated: written sectors reach offset "
            f"{h.data_offset + last * h.sectorsize} but the file ends at {c.length}"
        )
    return Inspection(
        path=path,
        header=h,
        backing=backing.state(c, backing_path),
        sectors_written=c.written(),
        file_length=c.length,
        disk_usage=hostfile.disk_usage(path),
        in_use_by=hostfile.holder(path),
        warnings=tuple(warnings),
    )
