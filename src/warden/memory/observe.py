"""Observation: each guest's memory counters over mconsole, and the host's side of them.

Guest side, with no agent in the guest: `proc meminfo` (every watch tick), `proc vmstat`
(every full tick), `proc zoneinfo` (once per boot, for the watermarks). Host side: the guest's
cgroup memory usage (v1 memory.usage_in_bytes on a hybrid host, memory.current on pure v2)
and the host's MemAvailable.

mconsole replies carry no request id; a reply that arrives after its request timed out can be
taken for the answer to the next request. Every reply is therefore checked to be the file
asked for (procfs raises ProcfsError otherwise) and read once more if it is not.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path

from warden.host.cgroup import Cgroup
from warden.memory.procfs import (
    Meminfo,
    ProcfsError,
    Vmstat,
    Watermarks,
    parse_meminfo,
    parse_vmstat,
    parse_zoneinfo,
)
from warden.uml.mconsole import proc_text

Request = Callable[[str, float | None], Awaitable[str]]

READ_TIMEOUT = 1.0


async def _read(request: Request, file: str, timeout: float) -> str:
    return proc_text(await request(f"proc {file}", timeout))


async def meminfo(request: Request, timeout: float = READ_TIMEOUT) -> Meminfo:
    try:
        return parse_meminfo(await _read(request, "meminfo", timeout))
    except ProcfsError:
        return parse_meminfo(await _read(request, "meminfo", timeout))


async def vmstat(request: Request, timeout: float = READ_TIMEOUT) -> Vmstat:
    try:
        return parse_vmstat(await _read(request, "vmstat", timeout))
    except ProcfsError:
        return parse_vmstat(await _read(request, "vmstat", timeout))


async def watermarks(request: Request, timeout: float = READ_TIMEOUT) -> Watermarks:
    try:
        return parse_zoneinfo(await _read(request, "zoneinfo", timeout))
    except ProcfsError:
        return parse_zoneinfo(await _read(request, "zoneinfo", timeout))


def host_meminfo(path: Path = Path("/proc/meminfo")) -> Meminfo:
    return parse_meminfo(path.read_text())


def cgroup_memory(cg: Cgroup) -> int | None:
    """Host memory charged to the guest's cgroup (its memory file pages among them)."""
    h = cg.hierarchy
    candidates: list[Path] = []
    v1 = h.v1.get("memory")
    if v1 is not None:
        candidates.append(v1 / cg.rel / "memory.usage_in_bytes")
    candidates.append(cg.path / "memory.current")
    for p in candidates:
        try:
            return int(p.read_text().strip())
        except (OSError, ValueError):
            continue
    return None
