"""The memory policy's inputs and outputs (memory/policy.py describes the policy): its
configuration, what it is told of each guest, what it remembers of one between calls (a Memo),
what it concludes (an Assessment), the actions and the Plan. Plain frozen data.
"""

from dataclasses import dataclass, field

from warden.memory.procfs import Meminfo, Vmstat, Watermarks

MIB = 1 << 20
MAX_RATE = float(8 << 30)  # bytes/s: a growth sample above this is a measuring error


@dataclass(frozen=True)
class Config:
    budget: int
    interval: float = 1.0  # seconds between full observations
    watch: float = 0.1  # seconds between headroom checks (meminfo only)
    buffer_frac: float = 0.2
    min_buffer: int = 24 * MIB
    safety_min: int = 8 * MIB
    safety_frac: float = 0.05
    tighten_frac: float = 0.01
    loosen_frac: float = 0.25
    lookahead: float = 0.5
    hold: float = 10.0  # seconds a peak of `used` counts as demand after it passed
    burst_horizon: float = 0.3  # seconds of its fastest growth a bursty guest keeps free
    burst_memory: float = 120.0  # half-life (s) of what the policy remembers of a burst
    max_step: int = 128 * MIB  # largest single `config mem=-N` (the guest stalls meanwhile)
    idle_tax: float = 0.75
    chunk: int = 4 * MIB
    min_change: int = 2 * MIB  # smaller moves are not worth an mconsole round trip
    host_keep: int = 512 * MIB  # host MemAvailable the balancer never plans to use
    refault_pressure: int = 1 * MIB  # refaulted bytes per interval that count as pressure
    # The emergency reserve: budget the plan leaves to guests whose kernel has the OOM hook,
    # armed in each of them as credit it plugs back by itself (reserve_of).
    reserve_per_guest: int = 8 * MIB
    reserve_min: int = 32 * MIB
    reserve_frac: float = 1 / 8  # of the budget, at most
    # A stock kernel has no hook: it keeps free what it could fill, at the fastest growth
    # seen in the fleet, while the balancer reacts (a watch period and a plug's round trip).
    reaction: float = 0.15


@dataclass(frozen=True)
class GuestInput:
    """One guest as the policy sees it at this instant."""

    name: str
    max: int  # boot size of the running boot
    floor: int = 0  # memory_min
    weight: int = 100
    plugged: int = 0  # the ledger's hi (the budget's view)
    certain: bool = True
    pin: int | None = None
    mem: Meminfo | None = None  # None: cannot be observed now (booting, paused, silent)
    vm: Vmstat | None = None  # only on full ticks
    marks: Watermarks | None = None
    host_usage: int | None = None  # the guest's cgroup memory on the host
    hook: bool = False  # its kernel plugs memory back by itself when out of it
    credit: int = 0  # what that hook may plug back now (in the budget already)
    plugged_back: bool = False  # its hook plugged memory back since the last plan
    headroom: int = 0  # without the hook: free memory kept for one reaction (stock_headroom)

    @property
    def observable(self) -> bool:
        return self.mem is not None and self.certain


@dataclass(frozen=True)
class Memo:
    """What the policy remembers about a guest between calls."""

    t: float | None = None
    used: int | None = None
    growth: float = 0.0  # bytes/s of `used`, fast up, slow down
    burst: float = 0.0  # the fastest growth seen lately (bytes/s, halves every burst_memory)
    peak: int = 0  # highest `used` since peak_t
    peak_t: float | None = None
    stress_t: float | None = None  # last time it was short, or growing fast
    vm: Vmstat | None = None
    vm_t: float | None = None
    cache_keep: int = 0
    signals: tuple[str, ...] = ()  # of the last full tick (watch ticks keep them)
    cut_t: float | None = None  # last time a contention cut took it below its target
    cut_used: int = 0  # its `used` then


@dataclass(frozen=True)
class Assessment:
    name: str
    plugged: int
    used: int
    overhead: int
    available: int
    free: int
    cache: int
    must: int
    want: int
    target: int
    floor: int  # the least a contention cut may leave: must; while stressed, what it
    # needs now (current used, not its recent peak) plus its buffer and growth lookahead
    level: str  # "calm" | "pressure" | "emergency" | "pinned" | "idle" (not observable)
    signals: tuple[str, ...]
    reason: str
    spare: int = 0  # free memory every unplug step leaves on top of the watermark
    busy: bool = False  # short, pinned or growing now (not merely within `hold` of it)
    stressed: bool = False  # busy within the last `hold` seconds


@dataclass(frozen=True)
class Unplug:
    guest: str
    amount: int
    why: str
    used: int = 0  # the guest's `used` this plan saw: a step finding it grown stops
    spare: int = 0  # what the guest may grow into while one step runs (see STEP_TIME)
    headroom: int = 0  # the guest's stock-kernel headroom (part of its `must`)


@dataclass(frozen=True)
class Plug:
    guest: str
    amount: int
    why: str
    urgent: bool = False


@dataclass(frozen=True)
class Credit:
    """Grant (amount > 0) or take back (< 0) credit of a guest's OOM hook."""

    guest: str
    amount: int
    why: str


Action = Unplug | Plug


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    assessments: dict[str, Assessment]
    memos: dict[str, Memo]
    budget: int  # the effective budget this plan respects
    committed: int  # sum of grants + what stays fixed + holds
    short: int = 0  # how far even the `must`s overshoot the budget (0 normally)
    notes: tuple[str, ...] = field(default_factory=tuple)
    credits: tuple[Credit, ...] = ()
    reserve: int = 0  # the emergency reserve this plan left out of its plugs
    fastest: float = 0.0  # the fastest growth of `used` seen in the fleet (bytes/s)
