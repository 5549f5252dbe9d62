"""The host's /proc, read in one place: a process's state, start time and status fields.

A pid alone does not name a process across a daemon restart (pids are reused); a pid plus its
start time (field 22 of /proc/PID/stat, clock ticks after boot) does. The supervisor, the
network service and the honeypot feature keep both for the processes that outlive a daemon.
(A guest's own /proc, read through its mconsole, is parsed in warden.memory.procfs.)
"""

from pathlib import Path

# Fields after the command name in /proc/PID/stat: 0 is the state (field 3 of proc(5)), 1 the
# parent's pid (field 4), 19 the start time (field 22). The name is in parentheses and may
# hold spaces and ")": split after the last ")".
STATE = 0
PPID = 1
START_TIME = 19
GONE = ("Z", "X")  # a zombie or a dead process: it no longer runs


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot); tells a pid's reuse apart."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[START_TIME])


def running(pid: int, start: int | None = None) -> bool:
    """`pid` runs (not a zombie) and, if `start` is given, is the process that started then."""
    fields = stat_fields(pid)
    if fields is None or fields[STATE] in GONE:
        return False
    return start is None or int(fields[START_TIME]) == start


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as key -> value (values stripped). OSError if the process is gone."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out
