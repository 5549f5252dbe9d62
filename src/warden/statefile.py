"""State files the daemon rewrites whole: one guarantee for all of them.

`write` replaces a file atomically and durably: the new contents go to a temporary file in the
same directory, which is fsync'd and renamed over the old one, and the directory is fsync'd
so that the rename itself survives a crash. After a crash (of warden or of the machine) the
file holds the old or the new contents, never a mix, an empty file or nothing.

Used for net/state.json, memory/state.json, machines/NAME/honeypot.json and the uid claims.
`create_once` makes a file that must never be replaced (a home's keys): the first writer wins.
"""

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def temp_path(path: Path) -> Path:
    """A hidden temporary beside `path`, named for this call alone: the writer's pid (so that
    a leftover says whose it was) and a random part, since two threads of one process may
    write the same file at once (two recycles made the evidence key together, CI, stop 23)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")


def _whole_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new temporary beside `path`, with `mode`, on disk (fsync'd)."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (the file gets `mode`)."""
    tmp = _whole_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes, mode: int = 0o600) -> bytes:
    """Create `path` with `data` unless it exists; return what it holds then. Made whole (and
    fsync'd) under a temporary and published with link(2), which never replaces a file another
    writer made meanwhile: of writers racing to make a home's key, the first wins and every
    one of them returns the winner's key."""
    tmp = _whole_temp(path, data, mode)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return path.read_bytes()


def write_json(path: Path, doc: Any, mode: int = 0o600, **dumps: Any) -> None:
    """Replace `path` with `doc` as JSON (`dumps`: json.dumps arguments), ending in a newline."""
    write(path, (json.dumps(doc, **dumps) + "\n").encode(), mode)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
