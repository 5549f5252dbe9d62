"""What a killed writer leaves next to a result (found by the fault campaign: kill -9 of a merge
left a 256 MiB `.OUT.tmp-PID-*`, of the daemon during a snapshot a half directory that made
the name unusable): the next writer of that name sweeps it, and never a live writer's."""

import os
import subprocess
from pathlib import Path

from warden.disk import hostfile


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_dead_writers_temp_file_and_directory_are_swept_by_the_next_writer(
    tmp_path: Path,
) -> None:
    gone = dead_pid()
    left_file = tmp_path / f".out.img.tmp-{gone}-0badc0de"
    left_file.write_bytes(b"x" * 4096)
    left_dir = tmp_path / f".snap1.tmp-{gone}-0badc0de"
    left_dir.mkdir()
    (left_dir / "disk.cow").write_bytes(b"half")
    other = tmp_path / f".another.img.tmp-{gone}-0badc0de"  # another name: not ours to judge
    other.write_bytes(b"")

    fd, temp = hostfile.temp_file(tmp_path, "out.img")
    os.close(fd)
    staging = hostfile.temp_dir(tmp_path, "snap1")

    assert not left_file.exists() and not left_dir.exists()
    assert other.exists() and temp.exists() and staging.is_dir()


def test_a_live_writers_temps_are_kept(tmp_path: Path) -> None:
    fd, mine = hostfile.temp_file(tmp_path, "out.img")
    os.close(fd)
    live = tmp_path / ".out.img.tmp-1-0badc0de"  # pid 1 is alive
    live.write_bytes(b"")
    assert hostfile.sweep_temps(tmp_path, "out.img") == []
    assert mine.exists() and live.exists()
