"""warden.statefile: state files are replaced atomically and durably, with one guarantee."""

import concurrent.futures
import os
import stat
import threading
from pathlib import Path

import pytest

from warden import statefile


def test_write_replaces_the_file_with_the_given_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    statefile.write_json(path, {"a": 1}, mode=0o640, indent=1)
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_the_file_and_its_directory_are_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.json"
    done: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        done.append("dir" if target == str(tmp_path) else "file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        done.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    statefile.write(path, b"x")
    assert done == ["file", "rename", "dir"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.json"
    statefile.write(path, b"old")

    def broken(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        statefile.write(path, b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def _synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records what each os.fsync call synced: a file's or a directory's path."""
    done: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        done.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return done


def test_every_state_file_writer_syncs_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two of the writers used to rename a file they had not synced: after a crash of the
    # machine the new name could point at an empty file.
    from warden.honeypot import channels
    from warden.host import uids
    from warden.net import state as netstate
    from warden.paths import layout

    done = _synced(monkeypatch)

    def synced_into(directory: Path) -> bool:
        """The last two syncs: a file in `directory`, then `directory` itself."""
        return len(done) >= 2 and Path(done[-2]).parent == directory and done[-1] == str(directory)

    netstate.save(tmp_path / "net" / "state.json", netstate.State())
    assert synced_into(tmp_path / "net")
    channels.write_state(tmp_path, channels.PotState(boot=1, pid=2, pid_start=3))
    assert synced_into(tmp_path)
    home = layout(tmp_path / "home")
    home.ensure()
    uid = uids.allocate(home, "g1", 3_900_000_000, 8, None)
    assert synced_into(uids.claims_dir(home))
    assert (uids.claims_dir(home) / str(uid)).exists()


def test_threads_writing_one_file_at_once_leave_one_whole_version(tmp_path: Path) -> None:
    """Two threads of one process used to share a pid-named temporary: their bytes mixed in it
    (O_TRUNC), or one renamed it away under the other."""
    path = tmp_path / "state.json"
    versions = [bytes([65 + i]) * 200_000 for i in range(8)]
    barrier = threading.Barrier(len(versions))

    def write(data: bytes) -> None:
        barrier.wait()
        statefile.write(path, data)

    with concurrent.futures.ThreadPoolExecutor(len(versions)) as pool:
        for f in [pool.submit(write, v) for v in versions]:
            f.result()
    assert path.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("make", ["session-log key", "persona key"])
def test_threads_making_a_homes_key_at_once_all_get_the_same_key(tmp_path: Path, make: str) -> None:
    from warden import persona
    from warden.paths import layout
    from warden.sessionlog import store as logstore

    home = layout(tmp_path / "home")
    fn = {
        "session-log key": lambda: logstore.load_key(home, create=True),
        "persona key": lambda: persona.home_key(home),
    }[make]
    barrier = threading.Barrier(8)

    def one() -> bytes:
        barrier.wait()
        return bytes(fn())

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = {f.result() for f in [pool.submit(one) for _ in range(8)]}
    assert len(keys) == 1
    assert len(list(home.keys.iterdir())) == 1
