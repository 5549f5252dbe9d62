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
from dataclasses import replace

from warden.memory.estimate import (
    NUDGE_STEP,
    assess,
    must_of,
    recently,
    reserve_of,
    stock_headroom,
    unplug_step,
    usable_credit,
    used_of,
)
from warden.memory.ledger import pages
from warden.memory.model import (
    MAX_RATE,
    MIB,
    Action,
    Assessment,
    Config,
    Credit,
    GuestInput,
    Memo,
    Plan,
    Plug,
    Unplug,
)
from warden.memory.procfs import PAGE
from warden.units import format_size


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
        if not a.busy and a.target > a.plugged and recently(memo.cut_t, now, cfg.hold):
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


# What the rest of warden imports from here (the policy's types are memory/model.py's, one
# guest's estimates memory/estimate.py's).
__all__ = [
    "MIB",
    "NUDGE_STEP",
    "Action",
    "Assessment",
    "Config",
    "Credit",
    "GuestInput",
    "Memo",
    "Plan",
    "Plug",
    "Unplug",
    "admission_refusal",
    "assess",
    "decide",
    "effective_budget",
    "must_of",
    "plan_credits",
    "reserve_of",
    "room_for",
    "set_refusal",
    "stock_headroom",
    "unplug_step",
    "used_of",
]
