"""The memory policy for one guest (memory/policy.py describes the policy, and decides for the
fleet): its overhead, working set, the hard line below which nothing is unplugged, the
headroom and emergency reserve, an unplug's step, the pressure signals and its assessment.
Pure: no I/O and no clock.
"""

from warden.memory.ledger import pages
from warden.memory.model import MIB, Assessment, Config, GuestInput, Memo
from warden.memory.procfs import PAGE, Meminfo, Watermarks, default_watermarks
from warden.units import format_size


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
    at_cut = recently(memo.cut_t, now, cfg.hold) and used <= memo.cut_used + CUT_GROWTH
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


def recently(t: float | None, now: float, within: float) -> bool:
    return t is not None and now - t < within
