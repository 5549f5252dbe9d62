"""Observation: each guest's memory counters over mconsole, and the host's side of them.

Guest side, with no agent in the guest: `proc meminfo` (every watch tick), `proc vmstat`
(every full tick), `proc zoneinfo` (once per boot, for the watermarks). Host side: the guest's
cgroup memory usage (v1 memory.usage_in_bytes on a hybrid host, memory.current on pure v2)
and the host's MemAvailable.

mconsole replies carry no request id; a reply that arrives after its request timed out can be
taken for the answer to the next request. Every reply is therefore checked to be the file
asked for (procfs raises ProcfsError otherwise) and read once more if it is not.

What a guest's kernel answers is hostile input: each reading (both tries together) ends within
its `timeout`, however slowly or endlessly the guest answers, and with the guest's `size`
given, every number is clamped to what the guest can have (procfs).
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from warden.errors import MconsoleError
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
T = TypeVar("T")


async def _read(request: Request, file: str, timeout: float) -> str:
    return proc_text(await request(f"proc {file}", timeout))


async def _twice(request: Request, file: str, timeout: float, parse: Callable[[str], T]) -> T:
    """Read and parse `file`; once more if the reply was not that file; all within `timeout`
    (MconsoleError when it passes, as for a single request)."""
    try:
        async with asyncio.timeout(timeout):
            try:
                return parse(await _read(request, file, timeout))
            except ProcfsError:
                return parse(await _read(request, file, timeout))
    except TimeoutError:
        raise MconsoleError(f"no complete `proc {file}` within {timeout} s") from None


async def meminfo(
    request: Request, timeout: float = READ_TIMEOUT, size: int | None = None
) -> Meminfo:
    return await _twice(request, "meminfo", timeout, lambda t: parse_meminfo(t, size))


async def vmstat(request: Request, timeout: float = READ_TIMEOUT) -> Vmstat:
    return await _twice(request, "vmstat", timeout, parse_vmstat)


async def watermarks(
    request: Request, timeout: float = READ_TIMEOUT, size: int | None = None
) -> Watermarks:
    return await _twice(request, "zoneinfo", timeout, lambda t: parse_zoneinfo(t, size))


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
