"""Finding a process again after a daemon restart: pid plus start time (pure /proc reads)."""

from pathlib import Path


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): tells a pid's reuse apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def alive(pid: int, start: int | None) -> bool:
    """True while the process `pid` that started at `start` still runs (zombies do not count)."""
    if start is None or start_time(pid) != start:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return status not in ("Z", "X")
