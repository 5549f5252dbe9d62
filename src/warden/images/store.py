"""Named guest images and how a name or path becomes a base image file.

Layout (docs/decisions/2026-11-29-images-and-disks.md, "Images"):
    WARDEN_HOME/images/NAME.img        symlink -> NAME-KEY.img (the current build of NAME)
    WARDEN_HOME/images/NAME-KEY.img    the image file, read-only, hard-linked from the cache
    WARDEN_CACHE/images/NAME-KEY.img   built once per machine for each input KEY

A guest's COW file records the versioned path (NAME-KEY.img), so rebuilding an image never
breaks guests made over an older build; `reset` takes the current build.
"""

import contextlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from warden.errors import ImageError, NotFound
from warden.paths import Layout

EXT_SUPERBLOCK_OFFSET = 1024
EXT_MAGIC_OFFSET = 56  # s_magic within the superblock, little-endian u16
EXT_MAGIC = 0xEF53


def check_ext4(path: Path) -> None:
    """ImageError unless `path` is a regular file holding an ext2/3/4 filesystem."""
    if not path.exists():
        raise ImageError(f"image {path}: no such file")
    if not path.is_file():
        raise ImageError(f"image {path}: not a regular file")
    with path.open("rb") as f:
        f.seek(EXT_SUPERBLOCK_OFFSET + EXT_MAGIC_OFFSET)
        raw = f.read(2)
    if len(raw) < 2 or struct.unpack("<H", raw)[0] != EXT_MAGIC:
        raise ImageError(
            f"image {path} is not an ext4 filesystem (no ext magic 0xEF53 at byte "
            f"{EXT_SUPERBLOCK_OFFSET + EXT_MAGIC_OFFSET}); give a file made by mkfs.ext4 "
            "or a built image's name (warden image ls)"
        )


@dataclass(frozen=True)
class ImageInfo:
    name: str
    path: Path  # the versioned file
    key: str
    size: int  # apparent size
    disk: int  # bytes allocated
    meta: dict[str, str]

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "key": self.key,
            "size": self.size,
            "disk": self.disk,
            **self.meta,
        }


class ImageStore:
    def __init__(self, layout: Layout):
        self.layout = layout

    def resolve(self, ref: str) -> Path:
        """The base image file for a fleet file's `image` value (a name or a path)."""
        if "/" in ref or ref.endswith(".img"):
            path = Path(ref).absolute()
            if not path.exists():
                raise NotFound(f"image {ref!r}: no such file")
            check_ext4(path)
            return path
        link = self.layout.images / f"{ref}.img"
        if not link.exists():
            known = ", ".join(i.name for i in self.ls()) or "none yet"
            raise NotFound(
                f"image {ref!r} is not built (known: {known}); "
                f"build it with `warden image build {ref}` or give a path to an ext4 file"
            )
        path = link.resolve()
        check_ext4(path)
        return path

    def ls(self) -> list[ImageInfo]:
        out = []
        for link in sorted(self.layout.images.glob("*.img")):
            if not link.is_symlink():
                continue
            target = link.resolve()
            if not target.exists():
                continue
            st = target.stat()
            meta_file = target.with_suffix(".json")
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            out.append(
                ImageInfo(
                    name=link.stem,
                    path=target,
                    key=target.stem.rsplit("-", 1)[-1],
                    size=st.st_size,
                    disk=st.st_blocks * 512,
                    meta=meta,
                )
            )
        return out

    def cached(self, name: str, key: str) -> Path:
        return self.layout.cache / "images" / f"{name}-{key}.img"

    def install(self, name: str, key: str, meta: dict[str, str]) -> Path:
        """Make the cached build NAME-KEY the current image NAME in this home."""
        src = self.cached(name, key)
        self.layout.images.mkdir(parents=True, exist_ok=True)
        dst = self.layout.images / f"{name}-{key}.img"
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
            try:
                os.link(src, tmp)  # same filesystem: no copy, same mtime for COW headers
            except OSError:
                shutil.copy2(src, tmp)  # copy2 keeps the mtime the COW header will record
            os.replace(tmp, dst)
        dst.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        link = self.layout.images / f"{name}.img"
        tmp_link = link.with_name(f".{link.name}.tmp{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(dst.name)
        os.replace(tmp_link, link)
        return dst
