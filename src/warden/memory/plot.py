"""`warden mem plot`: plugged and used memory per guest over time, from the balancer's log."""

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warden.errors import WardenError
from warden.memory.record import read_log


@dataclass
class Series:
    t: list[float] = field(default_factory=list)
    plugged: list[float] = field(default_factory=list)  # MiB
    used: list[float | None] = field(default_factory=list)


@dataclass
class History:
    guests: dict[str, Series]
    t: list[float]
    budget: list[float]
    total: list[float]
    actions: list[tuple[float, str, str, int]]  # (t, guest, op, KiB)
    start: float


def load(directory: Path, since: float = 0.0, names: set[str] | None = None) -> History:
    guests: dict[str, Series] = defaultdict(Series)
    t: list[float] = []
    budget: list[float] = []
    total: list[float] = []
    actions: list[tuple[float, str, str, int]] = []
    for rec in read_log(directory, since):
        kind = rec.get("k")
        if kind == "tick":
            ts = float(rec["t"])
            t.append(ts)
            budget.append(rec.get("budget", 0) / 1024)
            total.append(rec.get("plugged", 0) / 1024)
            g: dict[str, Any] = rec.get("g", {})
            for name, r in g.items():
                if names and name not in names:
                    continue
                s = guests[name]
                s.t.append(ts)
                s.plugged.append(r.get("p", 0) / 1024)
                s.used.append(r["u"] / 1024 if "u" in r else None)
        elif kind == "act" and rec.get("ok") and (not names or rec.get("g") in names):
            actions.append((float(rec["t"]), str(rec["g"]), str(rec["op"]), int(rec["kib"])))
    if not t or (names and not guests):
        raise WardenError(
            f"no balancer ticks in {directory}"
            + (" for that period" if since else "")
            + ": is the daemon running with guests? (`warden top`)"
        )
    return History(dict(guests), t, budget, total, actions, start=t[0])


def render(h: History, out: Path, title: str = "warden memory") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    cmap = plt.get_cmap("tab10")
    for i, (name, s) in enumerate(sorted(h.guests.items())):
        color = cmap(i % 10)
        x = [v - h.start for v in s.t]
        top.plot(x, s.plugged, color=color, lw=1.6, label=f"{name} plugged")
        xs = [xv for xv, u in zip(x, s.used, strict=True) if u is not None]
        us = [u for u in s.used if u is not None]
        if us:
            top.plot(xs, us, color=color, lw=1.0, ls="--", label=f"{name} used")
    top.set_ylabel("MiB")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=2, loc="upper left")
    x = [v - h.start for v in h.t]
    bottom.plot(x, h.total, color="black", lw=1.4, label="sum plugged")
    bottom.plot(x, h.budget, color="red", lw=1.0, ls=":", label="budget")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("seconds")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
