"""The guest's memory counters, parsed from /proc text read over mconsole (`proc FILE`).

Pure: text in, values out, so every parser is tested with captured files. Sizes come out in
bytes. A reply that is not the file asked for (a stale mconsole datagram, a truncated reply)
raises ProcfsError instead of yielding zeros that would make a guest look empty.

The text comes from the guest's kernel, which a guest that loaded a module controls: it is
hostile input (docs/security.md, "Guest channels"). Lines longer than LINE_MAX are skipped,
and every number is clamped to what the guest can have: sizes to [0, its memory] (the
`size` the caller knows, else ABSURD), parts of its memory to [0, MemTotal], counters to
[0, COUNTER_MAX]. `Meminfo.clamped` names the fields that had to be clamped.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from warden.errors import WardenError

KIB = 1024
PAGE = 4096
LINE_MAX = 256  # longer than any line of meminfo, vmstat or zoneinfo: such lines are skipped
ABSURD = 1 << 50  # 1 PiB: no guest has more memory; the bound when its size is not known
COUNTER_MAX = 1 << 62  # event counters (vmstat) that claim more are clamped


class ProcfsError(WardenError):
    """A /proc reply that cannot be the file it claims to be."""


# /proc/meminfo fields the balancer uses (fs/proc/meminfo.c, Linux 6.1).
MEMINFO_FIELDS = {
    "MemTotal": "total",
    "MemFree": "free",
    "MemAvailable": "available",
    "Buffers": "buffers",
    "Cached": "cached",
    "Shmem": "shmem",
    "Active(file)": "active_file",
    "Inactive(file)": "inactive_file",
    "AnonPages": "anon",
    "SReclaimable": "sreclaimable",
    "SUnreclaim": "sunreclaim",
    "KernelStack": "kernel_stack",
    "PageTables": "page_tables",
    "Percpu": "percpu",
    "SwapTotal": "swap_total",
    "SwapFree": "swap_free",
}
REQUIRED_MEMINFO = ("MemTotal", "MemFree", "MemAvailable", "Cached", "AnonPages")


@dataclass(frozen=True)
class Meminfo:
    total: int
    free: int
    available: int
    buffers: int = 0
    cached: int = 0
    shmem: int = 0
    active_file: int = 0
    inactive_file: int = 0
    anon: int = 0
    sreclaimable: int = 0
    sunreclaim: int = 0
    kernel_stack: int = 0
    page_tables: int = 0
    percpu: int = 0
    swap_total: int = 0
    swap_free: int = 0
    clamped: tuple[str, ...] = ()  # fields whose value the guest gave was out of bounds

    @property
    def file_cache(self) -> int:
        """Page cache on the LRU lists (what reclaim can drop; tmpfs is not in it)."""
        return self.active_file + self.inactive_file

    @property
    def unaccounted(self) -> int:
        """Memory in no counter: pages `config mem=-N` took live here (docs/formats/memlog.md)."""
        counted = (
            self.free
            + self.buffers
            + self.cached
            + self.sreclaimable
            + self.sunreclaim
            + self.anon
            + self.kernel_stack
            + self.page_tables
            + self.percpu
        )
        return self.total - counted


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if len(line) <= LINE_MAX:
            yield line


def _kv_lines(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _clamp(value: int, top: int) -> int:
    return min(max(value, 0), top)


# Not parts of the guest's memory: swap is a disk of its own.
_SWAP = ("swap_total", "swap_free")


def parse_meminfo(text: str, size: int | None = None) -> Meminfo:
    """`size`: the most memory the guest can have (bytes); totals above it are clamped."""
    raw = _kv_lines(text)
    missing = [k for k in REQUIRED_MEMINFO if k not in raw]
    if missing:
        raise ProcfsError(f"not a /proc/meminfo (no {', '.join(missing)}): {text[:80]!r}")
    values: dict[str, int] = {}
    for key, attr in MEMINFO_FIELDS.items():
        if key not in raw:
            continue
        parts = raw[key].split()
        try:
            number = int(parts[0])
        except (IndexError, ValueError):
            raise ProcfsError(f"/proc/meminfo: {key} is {raw[key]!r}, not a number") from None
        unit = parts[1] if len(parts) > 1 else ""
        values[attr] = number * KIB if unit == "kB" else number
    clamped: list[str] = []

    def bound(attr: str, top: int) -> None:
        if attr in values and values[attr] != _clamp(values[attr], top):
            values[attr] = _clamp(values[attr], top)
            clamped.append(attr)

    bound("total", ABSURD if size is None else min(size, ABSURD))
    for attr in MEMINFO_FIELDS.values():
        if attr == "total":
            continue
        bound(attr, ABSURD if attr in _SWAP else values["total"])
    bound("swap_free", values.get("swap_total", 0))
    return Meminfo(**values, clamped=tuple(clamped))


# /proc/vmstat counters the balancer watches (mm/vmstat.c, Linux 6.1): all monotonic.
VMSTAT_FIELDS = (
    "pgmajfault",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "allocstall_normal",
    "allocstall_movable",
    "oom_kill",
    "workingset_refault_file",
    "workingset_refault_anon",
    "pswpin",
    "pswpout",
)


@dataclass(frozen=True)
class Vmstat:
    pgmajfault: int = 0
    pgscan_kswapd: int = 0
    pgscan_direct: int = 0
    pgsteal_kswapd: int = 0
    pgsteal_direct: int = 0
    allocstall_normal: int = 0
    allocstall_movable: int = 0
    oom_kill: int = 0
    workingset_refault_file: int = 0
    workingset_refault_anon: int = 0
    pswpin: int = 0
    pswpout: int = 0

    @property
    def allocstall(self) -> int:
        return self.allocstall_normal + self.allocstall_movable

    @property
    def refaults(self) -> int:
        return self.workingset_refault_file + self.workingset_refault_anon


def parse_vmstat(text: str) -> Vmstat:
    values: dict[str, int] = {}
    seen = 0
    for line in _lines(text):
        parts = line.split()
        if len(parts) != 2:
            continue
        seen += 1
        if parts[0] in VMSTAT_FIELDS:
            try:
                values[parts[0]] = _clamp(int(parts[1]), COUNTER_MAX)
            except ValueError:
                raise ProcfsError(f"/proc/vmstat: {parts[0]} is {parts[1]!r}") from None
    if seen < 20 or "pgmajfault" not in values or "oom_kill" not in values:
        raise ProcfsError(f"not a /proc/vmstat: {text[:80]!r}")
    return Vmstat(**values)


@dataclass(frozen=True)
class Watermarks:
    """Free-page watermarks summed over the guest's zones, in bytes (mm/page_alloc.c)."""

    min: int
    low: int
    high: int


def parse_zoneinfo(text: str, size: int | None = None) -> Watermarks:
    """The min/low/high lines of each zone (`pages free ... min N low N high N`), each sum
    clamped to the guest's `size`."""
    marks = {"min": 0, "low": 0, "high": 0}
    found = 0
    top = ABSURD if size is None else min(size, ABSURD)
    for line in _lines(text):
        parts = line.split()
        if len(parts) == 2 and parts[0] in marks:
            try:
                marks[parts[0]] = _clamp(marks[parts[0]] + int(parts[1]) * PAGE, top)
            except ValueError:
                raise ProcfsError(f"/proc/zoneinfo: {line.strip()!r}") from None
            found += 1
    if found < 3 or not marks["min"] <= marks["low"] <= marks["high"]:
        raise ProcfsError(f"not a /proc/zoneinfo with watermarks: {text[:80]!r}")
    return Watermarks(**marks)


def default_watermarks(total: int) -> Watermarks:
    """When zoneinfo could not be read: the kernel's rule of thumb (min_free_kbytes =
    sqrt(16 x lowmem KiB), low = min x 5/4, high = min x 3/2), rounded up."""
    min_kib = int((16 * (total // KIB)) ** 0.5)
    mn = max(128, min(min_kib, 262144)) * KIB
    return Watermarks(min=mn, low=mn * 5 // 4, high=mn * 3 // 2)
