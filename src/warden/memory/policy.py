"""The memory policy: a pure function from what the guests report to what to plug and unplug.

No I/O and no clock: `decide()` gets the samples, the ledger's view and the time, and returns
a Plan (actions plus the reasoning per guest) and the memos to pass to the next call. Tested
with scripted traces (tests/test_memory_policy.py); `act.py` performs the plan.

Per guest, in bytes of its boot size (`memory`, the most it can have):
    overhead  boot size - MemTotal: kernel, mem_map and reserved pages the guest never sees
    used      MemTotal - MemAvailable - unplugged: what its kernel cannot reclaim (anon,
              tmpfs, unreclaimable slab...); page cache is not in it
    must      max(memory_min, overhead + used + safety): never unplug below this. safety is
              max(8 MiB, 5% of used) plus the high watermark. Unplugging past free memory
              panics a UML guest (seen 10 of 10), so this is a hard line, not a preference.
    want      overhead + demand + buffer + lookahead + cache_keep
              demand     the highest `used` of the last 10 s (a job that frees its memory
                         and allocates again at once is not squeezed in between)
              buffer     max(24 MiB, 20% of demand)          (Hyper-V: demand x 1.2)
                         or, for a guest seen growing fast, 0.3 s of its fastest growth
                         (remembered with a 2-minute half-life, at most 1/3 of memory):
                         a tmpfs filled at ~1 GB/s empties a 24 MiB buffer in 25 ms
              lookahead  growth rate of used x 0.5 s         (plug ahead of a rising job)
              cache_keep page cache the guest showed it needs (refaults), else shrinking
                         by 1% of plugged per interval       (Senpai: tighten slowly)
    target    want, clamped to [must, memory]; a pin (`warden mem set`) replaces want.

Pressure signals, from /proc/vmstat deltas and MemAvailable:
    emergency  an OOM kill, MemAvailable below the safety margin, or (warden's kernel) a
               plug-back by its OOM hook: target = memory (give everything back at once:
               Senpai loosens up to 100%)
    pressure   direct reclaim (allocstall, pgscan_direct), refaults of evicted cache, swap
               traffic, or MemAvailable below half the buffer: target >= plugged +
               max(buffer, 25%)
    calm       target = want; a reduction takes all free memory above the buffer at once
               (free pages serve nobody) but page cache only 1% of plugged per interval,
               and only once the guest has been calm (not short, not growing faster than
               half its buffer per lookahead) for 10 s: memory just given back stays.

Contention: when the targets (plus budget promised to booting guests) do not fit the budget,
memory is taken back 4 MiB at a time from the guest with the fewest shares per MiB, idle
memory taxed as in VMware ESX (Waldspurger, OSDI'02): rho = weight / (grant x (f + k(1-f))),
f the active fraction of the grant, k = 1/(1 - 0.75). Nobody goes below `must`. A busy
guest (short, pinned, or growing now) keeps what it needs now (used + buffer + lookahead +
a step's spare): in the middle of a burst it looks idle (memory just plugged, not used yet)
and would be cut first. Guests short of memory are cut only after all others are at their
floors. An idle guest gives up its luxuries (burst buffer, held peak, calm period) down to
`must`, and is not plugged back up while the contention lasts: free budget reaches the next
guest to grow in one plug, memory in an idle guest needs unplug steps first.

Watch ticks (every `watch` seconds, meminfo only) only give memory back (and take from
others to fund that); reductions for their own sake happen on full ticks (every `interval`),
when the vmstat signals are fresh.
"""

import heapq
from dataclasses import dataclass, field, replace

from warden.memory.ledger import pages
from warden.memory.procfs import PAGE, Meminfo, Vmstat, Watermarks, default_watermarks
from warden.units import format_size

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


# ---- one guest ------------------------------------------------------------------------------
def overhead_of(g: GuestInput) -> int:
    assert g.mem is not None
    return max(0, g.max - g.mem.total)


def used_of(g: GuestInput) -> int:
    assert g.mem is not None
    unplugged = g.max - g.plugged
    return max(0, g.mem.total - g.mem.available - unplugged)


def buffer_of(used: int, cfg: Config) -> int:
    return max(cfg.min_buffer, int(used * cfg.buffer_frac))


def safety_of(used: int, marks: Watermarks, cfg: Config) -> int:
    return max(cfg.safety_min, int(used * cfg.safety_frac)) + marks.high


def must_of(g: GuestInput, cfg: Config) -> int:
    """The least this guest may have plugged right now (the hard line)."""
    assert g.mem is not None
    marks = g.marks or default_watermarks(g.mem.total)
    used = used_of(g)
    need = overhead_of(g) + used + safety_of(used, marks, cfg) + g.headroom
    return min(g.max, max(g.floor, need))


def reserve_of(cfg: Config, budget: int, hooked: int) -> int:
    """The emergency reserve: reserve_per_guest for each guest with the OOM hook, at least
    reserve_min and at most reserve_frac of the budget; none without such guests."""
    if hooked == 0:
        return 0
    want = max(cfg.reserve_min, hooked * cfg.reserve_per_guest)
    return pages(min(want, int(budget * cfg.reserve_frac)))


def usable_credit(g: GuestInput) -> int:
    """Credit counts only up to what the guest has unplugged (the ledger's ceiling)."""
    return max(0, min(g.credit, g.max - g.plugged))


def stock_headroom(g: GuestInput, fastest: float, cfg: Config) -> int:
    """What a guest without the OOM hook keeps free beyond its working set: its growth at the
    fleet's fastest rate during one reaction of the balancer (none for a guest with the hook:
    it plugs back what it needs by itself)."""
    if g.hook:
        return 0
    return pages(int(fastest * cfg.reaction))


def keep_free(mem: Meminfo, marks: Watermarks | None, amount: int, cfg: Config) -> int:
    """Free memory an unplug of `amount` must leave. Unplug allocates with GFP_ATOMIC, which
    dips into the reserves below the min watermark; staying above low keeps those intact.
    With plenty of page cache behind, stop between min and low instead: the next allocation
    (our own next page, or the guest's) wakes kswapd, which frees page cache that the next
    step can take. That is the only way to reclaim cache from outside the guest; about 4 MiB
    per wake-up was seen on a 256 MiB guest."""
    m = marks or default_watermarks(mem.total)
    cache_behind = mem.available - mem.free
    if cache_behind - amount > cfg.safety_min * 2:
        return (m.min + m.low) // 2
    return m.low + 2 * MIB


NUDGE_STEP = 256 * 1024  # a step that only takes free memory below low (to wake kswapd)
CUT_GROWTH = 2 * MIB  # growth of `used` after a contention cut that is growth again


# How long one unplug step can take from the meminfo read to its last page (a 70 MiB
# `config mem=-N` took 47 ms on a loaded host): a guest growing meanwhile must still find the
# memory it grows into, or the step's GFP_ATOMIC allocations leave it with nothing killable
# ("System is deadlocked on memory", seen with tmpfs filled at full speed).
STEP_TIME = 0.1


def unplug_step(
    mem: Meminfo,
    marks: Watermarks | None,
    remaining: int,
    above_must: int,
    cfg: Config,
    spare: int = 0,
) -> int:
    """The next safe `config mem=-N` (whole pages), from a fresh meminfo; 0 when none is.
    `above_must` is plugged minus `must` computed from the same reading; `spare` is free
    memory to leave beyond the watermark (a guest seen growing fast grows during the step)."""
    m = marks or default_watermarks(mem.total)
    step = min(remaining, cfg.max_step, above_must)
    step = pages(min(step, mem.free - keep_free(mem, marks, step, cfg) - spare))
    nudge = mem.free - step < m.low
    return step if step >= (NUDGE_STEP if nudge else MIB) else 0


def _signals(
    g: GuestInput,
    memo: Memo,
    used: int,
    buffer: int,
    safety: int,
    now: float,
    cfg: Config,
    at_cut: bool = False,
) -> tuple[str, ...]:
    assert g.mem is not None
    out: list[str] = []
    if g.vm is not None and memo.vm is not None:
        d = g.vm
        p = memo.vm
        if d.oom_kill > p.oom_kill:
            out.append("oom")
        if d.allocstall > p.allocstall:
            out.append("stall")
        if d.pgscan_direct > p.pgscan_direct:
            out.append("dscan")
        if (d.refaults - p.refaults) * PAGE >= cfg.refault_pressure:
            out.append("refault")
        if d.pswpout > p.pswpout or d.pswpin > p.pswpin:
            out.append("swap")  # a guest with a swap device pages: it is short
        dt = max(1e-3, now - (memo.vm_t or now))
        if (d.pgmajfault - p.pgmajfault) / dt > 100:
            out.append("majflt")
    # On watch ticks (no vmstat) only MemAvailable speaks: counters' deltas are per interval
    # and acting on them again every watch tick would loosen ten times for one stall.
    # A guest a contention cut took to its `must`, and which has not grown since, shows
    # MemAvailable about its safety margin (less the high watermark, which MemAvailable
    # leaves out): that is where it was put, not a shortage (read as one, it was plugged
    # back and cut again on every tick).
    if at_cut:
        return tuple(out)
    if g.plugged_back:
        out.append("plugback")  # it ran out (the credit hides it in MemAvailable)
    if g.mem.available < safety:
        out.append("oom-risk")
    elif g.mem.available < buffer // 2:
        out.append("low")
    return tuple(out)


def assess(g: GuestInput, memo: Memo, cfg: Config, now: float) -> tuple[Assessment, Memo]:
    """Where this guest should be, and why (pure)."""
    assert g.mem is not None
    mem = g.mem
    marks = g.marks or default_watermarks(mem.total)
    full = g.vm is not None
    overhead = overhead_of(g)
    used = used_of(g)
    safety = safety_of(used, marks, cfg)
    must = min(g.max, max(g.floor, overhead + used + safety + g.headroom))
    if memo.peak_t is None or used >= memo.peak or now - memo.peak_t > cfg.hold:
        peak, peak_t = used, now
    else:
        peak, peak_t = memo.peak, memo.peak_t
    growth = memo.growth
    burst = memo.burst
    if memo.t is not None and memo.used is not None and now > memo.t:
        # Per watch period at least: samples closer than that (an action wakes the loop at
        # once) would turn one 4 MiB step into a gigabyte-a-second "burst".
        rate = max(0.0, (used - memo.used) / max(now - memo.t, cfg.watch))
        # Fast up; down by half every watch period (in time, not per sample).
        dt = now - memo.t
        growth = rate if rate > growth else rate + (growth - rate) * 0.5 ** (dt / cfg.watch)
        burst = max(rate, burst * 0.5 ** ((now - memo.t) / cfg.burst_memory))
    # A guest that has grown fast keeps room for its next burst: what it grows in the time
    # the balancer needs to see and answer it (a third of its boot size at most).
    buffer = max(buffer_of(peak, cfg), min(int(burst * cfg.burst_horizon), g.max // 3))
    at_cut = _recently(memo.cut_t, now, cfg.hold) and used <= memo.cut_used + CUT_GROWTH
    signals = _signals(g, memo, used, buffer, safety, now, cfg, at_cut)

    cache = mem.file_cache
    keep = memo.cache_keep
    if full:
        refault_bytes = 0
        if g.vm is not None and memo.vm is not None:
            refault_bytes = (g.vm.refaults - memo.vm.refaults) * PAGE
        if "refault" in signals:
            keep += max(2 * refault_bytes, int(cfg.loosen_frac * g.plugged))
        else:
            keep -= int(cfg.tighten_frac * g.plugged)
    keep = max(0, min(keep, cache))

    lookahead = int(growth * cfg.lookahead)
    want = overhead + peak + buffer + lookahead + keep
    if {"oom", "oom-risk", "plugback"} & set(signals):
        level, want, reason = "emergency", g.max, "out of memory: give it all back"
    elif {"stall", "dscan", "refault", "swap", "low"} & set(signals):
        level = "pressure"
        want = max(want, g.plugged + max(buffer, int(cfg.loosen_frac * g.plugged)))
        reason = "pressure (" + ",".join(signals) + "): loosen"
    else:
        level, reason = "calm", "demand x 1.2"
        if lookahead >= MIB:
            reason += f" + growth {format_size(int(growth))}/s"
    target = min(g.max, max(must, want))
    stress_t = memo.stress_t
    if level != "calm" or lookahead >= cfg.min_buffer // 2:
        stress_t = now
    stressed = stress_t is not None and now - stress_t < cfg.hold
    # Busy now (short, pinned, or growing) as opposed to `stressed` (busy within `hold`).
    busy = level != "calm" or g.pin is not None or lookahead >= cfg.min_buffer // 2
    # What one unplug step leaves free for growth during the step: while the guest is busy,
    # the fastest growth seen lately; once it has stopped growing, its present growth.
    spare = min(int((max(burst, growth) if busy else growth) * STEP_TIME), g.max // 4)
    if g.pin is not None:
        # Its working set wins over the pin, and so does its growth ahead: plugged only to
        # `must`, a guest filling tmpfs past its pin at 400 MB/s ran out between two watch
        # ticks, with nothing killable left (a panic in the hard-allocation test).
        level, reason = "pinned", "pinned by warden mem set"
        target = min(g.max, max(g.pin, must + lookahead))
        if target < g.plugged:
            # Down to the pin only with what the guest has free beyond its buffer: memory
            # read free a tick ago may be filled by now (tmpfs at ~1 GB/s), and an unplug
            # the guest cannot satisfy panics it ("System is deadlocked on memory", seen).
            room = max(0, mem.free - keep_free(mem, g.marks, 0, cfg) - buffer)
            target = max(target, g.plugged - room)
    elif target < g.plugged:
        if not full:
            target = g.plugged  # watch ticks only give
        elif stressed:
            # Loosen fast, tighten slowly: memory just given to a guest short of it (or
            # still growing) is not taken back before it has been calm for `hold` seconds.
            target = g.plugged
            reason = f"calm for {now - (stress_t or now):.0f}s only: keep"
        else:
            # Free pages above half the buffer go at once; page cache 1% per interval.
            fast = max(0, mem.free - keep_free(mem, g.marks, 0, cfg) - cfg.min_buffer // 2)
            slow = max(MIB, int(cfg.tighten_frac * g.plugged))
            target = max(target, g.plugged - max(fast, slow))
            reason = "tighten: " + reason
    new_memo = Memo(
        t=now,
        used=used,
        growth=growth,
        burst=burst,
        peak=peak,
        peak_t=peak_t,
        stress_t=stress_t,
        vm=g.vm if full else memo.vm,
        vm_t=now if full else memo.vm_t,
        cache_keep=keep,
        signals=signals if full else memo.signals,
        cut_t=memo.cut_t,
        cut_used=memo.cut_used,
    )
    a = Assessment(
        name=g.name,
        plugged=g.plugged,
        used=used,
        overhead=overhead,
        available=mem.available,
        free=mem.free,
        cache=cache,
        must=must,
        want=want,
        target=target,
        # Under contention a busy guest keeps what it needs now: its working set with the
        # plain buffer, its growth ahead and a step's spare; an idle one only its `must`. The
        # burst buffer and the calm period are luxuries of free memory: idle guests that had
        # each just run a job kept them and starved the next one mid-job (density.py).
        floor=(
            min(target, max(must, overhead + used + buffer_of(used, cfg) + lookahead + spare))
            if busy
            else must
        ),
        level=level,
        signals=signals,
        reason=reason,
        spare=spare,
        busy=busy,
        stressed=stressed,
    )
    return a, new_memo


# ---- the fleet --------------------------------------------------------------------------------
def effective_budget(
    cfg: Config, guests: list[GuestInput], host_available: int | None
) -> tuple[int, str]:
    """The configured budget, lowered when the host itself runs short: every guest may yet
    touch all it has plugged, so the host must be able to afford that on top of what it has
    now (memory a guest already touched is already out of host MemAvailable)."""
    if host_available is None:
        return cfg.budget, ""
    touched = sum(min(g.plugged, g.host_usage or 0) for g in guests)
    afford = host_available - cfg.host_keep + touched
    if afford < cfg.budget:
        return max(0, afford), (
            f"host MemAvailable {format_size(host_available)} lowers the budget to "
            f"{format_size(max(0, afford))}"
        )
    return cfg.budget, ""


def _rho(weight: int, grant: int, active: int, k: float) -> float:
    f = min(1.0, active / grant) if grant > 0 else 1.0
    return weight / (max(grant, 1) * (f + k * (1.0 - f)))


def _cut(
    grants: dict[str, int],
    floors: dict[str, int],
    weights: dict[str, int],
    active: dict[str, int],
    excess: int,
    cfg: Config,
) -> int:
    """Take `excess` bytes from the grants, idle-taxed shares first; returns what is left."""
    k = 1.0 / (1.0 - cfg.idle_tax)
    heap = [(_rho(weights[n], grants[n], active[n], k), n) for n in grants if grants[n] > floors[n]]
    heapq.heapify(heap)
    while excess > 0 and heap:
        _, n = heapq.heappop(heap)
        take = min(cfg.chunk, grants[n] - floors[n], excess)
        grants[n] -= take
        excess -= take
        if grants[n] > floors[n]:
            heapq.heappush(heap, (_rho(weights[n], grants[n], active[n], k), n))
    return excess


LEVEL_ORDER = {"emergency": 0, "pressure": 1, "pinned": 2, "calm": 3}


def _recently(t: float | None, now: float, within: float) -> bool:
    return t is not None and now - t < within


def decide(
    guests: list[GuestInput],
    memos: dict[str, Memo],
    cfg: Config,
    now: float,
    hold: int = 0,
    host_available: int | None = None,
    fastest: float = 0.0,
) -> Plan:
    """Everything the balancer should do now. `hold` is budget promised to booting guests
    (and to guests waiting in their OOM hook); `fastest` is the fleet's fastest growth seen
    before this call (Plan.fastest carries it on)."""
    budget, note = effective_budget(cfg, guests, host_available)
    notes = [note] if note else []
    guests = [replace(g, headroom=stock_headroom(g, fastest, cfg)) for g in guests]
    # Credit is in the budget from its grant on: the plugs are planned in what the reserve
    # (or, after emergency grants, the credit outstanding) leaves.
    reserve = reserve_of(cfg, budget, sum(1 for g in guests if g.hook))
    credit = sum(usable_credit(g) for g in guests)
    plan_budget = max(0, budget - max(reserve, credit))
    assessments: dict[str, Assessment] = {}
    new_memos: dict[str, Memo] = {}
    fixed = hold
    grants: dict[str, int] = {}
    musts: dict[str, int] = {}
    for g in guests:
        if not g.observable:
            fixed += g.plugged
            if g.name in memos:
                new_memos[g.name] = memos[g.name]
            continue
        a, memo = assess(g, memos.get(g.name, Memo()), cfg, now)
        assessments[g.name] = a
        new_memos[g.name] = memo
        fastest = max(fastest, min(memo.burst, MAX_RATE))
        grants[g.name] = a.target
        if not a.busy and a.target > a.plugged and _recently(memo.cut_t, now, cfg.hold):
            # Cut by contention within `hold` seconds and idle since: not refilled the moment
            # the budget looks free (a credit granted or a guest stepping down flips it), or
            # it is cut and refilled on every tick (seen: 120 MiB each way, ten times a
            # second).
            grants[g.name] = a.plugged
        musts[g.name] = a.floor if a.level != "pinned" else a.target
    committed = fixed + sum(grants.values())
    short = 0
    if committed > plan_budget:
        by_name = {g.name: g for g in guests}
        weights = {n: by_name[n].weight for n in grants}
        active = {n: assessments[n].overhead + assessments[n].used for n in grants}
        # Guests short of memory now (emergency, pressure) are cut only once every other
        # guest is down to its floor: by shares alone, a guest just given memory for its
        # burst looks idle (plugged, not yet used) and would pay first.
        short_now = {n for n, a in assessments.items() if a.level in ("emergency", "pressure")}
        calm = {n: grants[n] for n in grants if n not in short_now}
        left = _cut(calm, musts, weights, active, committed - plan_budget, cfg)
        grants.update(calm)
        left = _cut(grants, musts, weights, active, left, cfg)
        short = left
        less = f" less the reserve {format_size(budget - plan_budget)}" if credit or reserve else ""
        notes.append(
            f"contention: targets exceed the budget {format_size(budget)}{less}; "
            "took back by idle-taxed shares"
        )
        if left > 0:
            notes.append(f"even the guests' working sets exceed the budget by {format_size(left)}")
        for n, grant in grants.items():
            a = assessments[n]
            if not a.busy and grant > a.plugged:
                # An idle guest is not given memory while the budget is contended: what it
                # would get back is a luxury (the peak its job just freed, its burst buffer),
                # and budget left free is what a guest that starts growing gets at once, a
                # plug taking milliseconds; memory in an idle guest has to be unplugged
                # first (density.py: idle guests refilled, the next job met the OOM killer).
                grant = grants[n] = a.plugged
            if grant < a.target:
                assessments[n] = replace(
                    a, target=grant, reason=f"shares: cut {format_size(a.target - grant)}"
                )
                new_memos[n] = replace(new_memos[n], cut_t=now, cut_used=a.used)
        committed = fixed + sum(grants.values())

    by_name_g = {g.name: g for g in guests}
    unplugs: list[Unplug] = []
    plugs: list[tuple[int, int, Plug]] = []
    for n, grant in grants.items():
        a = assessments[n]
        delta = grant - a.plugged
        if delta <= -cfg.min_change:
            unplugs.append(
                Unplug(n, pages(-delta), a.reason, a.used, a.spare, by_name_g[n].headroom)
            )
        elif delta >= cfg.min_change or (delta > 0 and a.level == "emergency"):
            urgent = a.level in ("emergency", "pressure")
            amount = pages(delta) or PAGE
            plugs.append((LEVEL_ORDER.get(a.level, 3), -amount, Plug(n, amount, a.reason, urgent)))
    plugs.sort(key=lambda p: (p[0], p[1]))
    actions: tuple[Action, ...] = (*unplugs, *(p for _, _, p in plugs))
    credits = plan_credits(guests, grants, assessments, reserve, budget - committed, cfg)
    return Plan(
        actions=actions,
        assessments=assessments,
        memos=new_memos,
        budget=budget,
        committed=committed,
        short=short,
        notes=tuple(notes),
        credits=credits,
        reserve=max(reserve, credit),
        fastest=fastest,
    )


def plan_credits(
    guests: list[GuestInput],
    grants: dict[str, int],
    assessments: dict[str, Assessment],
    reserve: int,
    room: int,
    cfg: Config,
) -> tuple[Credit, ...]:
    """The reserve, armed: each guest with the OOM hook holds an equal share of it as credit,
    never more than it has unplugged after this plan (credit beyond that is never used).
    A guest busy now (short, or growing) keeps what emergency grants gave it (the driver
    grants those when a guest plugs back or waits); any other gives back what is above its
    share at once: four guests filling together, each finished one held its grant for the
    `hold` seconds of its calm period and the last one waited in its hook until it gave up.
    `room`: budget left after the plan's plugs."""
    hooked = [g for g in guests if g.hook]
    if not hooked:
        return ()
    share = pages(reserve // len(hooked))
    room -= sum(usable_credit(g) for g in guests)
    out: list[Credit] = []
    for g in hooked:  # take back first: it makes room for the grants
        a = assessments.get(g.name)
        if a is None or a.busy:
            continue  # unobservable, or it needs what it has now
        if g.credit - share >= cfg.min_change:
            out.append(Credit(g.name, -(g.credit - share), "above its share of the reserve"))
            room += min(g.credit, g.max - g.plugged) - min(share, g.max - g.plugged)
    for g in hooked:
        if g.name not in assessments:
            continue
        unplugged = max(0, g.max - grants.get(g.name, g.plugged))
        amount = pages(min(min(share, unplugged) - g.credit, room))
        if amount >= cfg.min_change or (amount > 0 and g.credit == 0):
            out.append(Credit(g.name, amount, "its share of the reserve"))
            room -= amount
    return tuple(out)


# ---- admission and manual sizes -----------------------------------------------------------------
def admission_refusal(name: str, floor: int, floors: dict[str, int], budget: int) -> str | None:
    """Why `name` may not start (its floor does not fit beside the others'), or None."""
    used = sum(floors.values())
    if used + floor <= budget:
        return None
    detail = ", ".join(f"{n} {format_size(f)}" for n, f in sorted(floors.items()) if f) or "none"
    return (
        f"cannot start {name}: its memory_min {format_size(floor)} does not fit beside the "
        f"floors of the guests already running ({format_size(used)}: {detail}) within the "
        f"memory budget {format_size(budget)}; {format_size(max(0, budget - used))} is left "
        "for floors. Stop a guest, lower a memory_min, or raise [host] memory_budget"
    )


def room_for(free: int, others: list[Assessment]) -> tuple[int, str]:
    """How much of `need` the budget can provide: what is free now plus what the other
    guests hold above their `must`. Returns (available, explanation)."""
    spare = sum(max(0, a.plugged - a.must) for a in others if a.level != "pinned")
    return free + spare, (
        f"{format_size(max(0, free))} free and {format_size(spare)} that other guests "
        "could give back above their working sets (pinned guests give nothing)"
    )


def set_refusal(
    name: str,
    size: int,
    g: GuestInput,
    a: Assessment | None,
    free: int,
    others: list[Assessment],
) -> str | None:
    """Why `warden mem set NAME SIZE` must be refused, or None."""
    if size > g.max:
        return (
            f"{name}: {format_size(size)} is above its boot size {format_size(g.max)} "
            "(memory in the fleet file: UML cannot plug more than it booted with)"
        )
    if size < g.floor:
        return (
            f"{name}: {format_size(size)} is below its memory_min {format_size(g.floor)} "
            "(lower the floor in the fleet file first)"
        )
    if a is not None and size < a.must:
        return (
            f"{name}: {format_size(size)} is below what it needs now: {format_size(a.must)} "
            f"(kernel overhead {format_size(a.overhead)} + used {format_size(a.used)} + "
            "safety margin); taking that much would panic the guest"
        )
    grow = size - g.plugged
    if grow > 0:
        have, why = room_for(free, others)
        if grow > have:
            return (
                f"{name}: growing from {format_size(g.plugged)} to {format_size(size)} needs "
                f"{format_size(grow)} more and the memory budget has only {why}"
            )
    return None
