"""`warden mem set|plot` and `warden top`: the memory balancer from the command line."""

import argparse
import json
import time
from pathlib import Path
from typing import Any

from warden import termsafe
from warden.api.client import ApiClient
from warden.errors import WardenError
from warden.paths import layout
from warden.units import format_size, parse_size


def _client() -> ApiClient:
    return ApiClient(layout())


def _set(args: argparse.Namespace) -> int:
    if args.size != "auto":
        try:
            parse_size(args.size)
        except ValueError as e:
            raise WardenError(f"size {args.size!r}: {e}, or 'auto'") from None
    info = _client().post(f"/memory/{args.name}", {"size": args.size})
    if args.json:
        print(json.dumps(info, indent=1))
    elif args.size == "auto":
        name = termsafe.line(info["name"])
        print(f"{name}: the balancer decides again (plugged {_mib(info['plugged'])})")
    else:
        note = "" if info.get("reached") else " (still moving there)"
        name = termsafe.line(info["name"])
        print(f"{name}: pinned at {args.size}, plugged {_mib(info['plugged'])}{note}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from warden.memory import plot
    from warden.memory.record import memory_dir

    since = time.time() - args.since if args.since else 0.0
    names = set(args.machine) if args.machine else None
    history = plot.load(memory_dir(layout().home) / "log", since, names)
    out = Path(args.out)
    plot.render(history, out)
    print(
        f"{out}: {len(history.guests)} guests, {len(history.t)} ticks, "
        f"{len(history.actions)} actions"
    )
    return 0


def _mib(n: int | None) -> str:
    return "-" if n is None else format_size(int(n))


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def table(snap: dict[str, Any]) -> str:
    """The text `warden top` shows (plain: it is also what --once prints into a pipe)."""
    lines = [
        f"budget {_mib(snap['budget'])} (now {_mib(snap['effective_budget'])})  "
        f"plugged {_mib(snap['plugged'])}  reserve {_mib(snap.get('reserve', 0))} "
        f"(credit {_mib(snap.get('credit', 0))})  free {_mib(snap['free'])}  "
        f"peak {_mib(snap['peak_plugged'])}  host available {_mib(snap['host_available'])}",
    ]
    q = termsafe.line  # guest names, notes and signals: escaped, as everything daemon-sent
    lines += [f"note: {q(n)}" for n in snap.get("notes", [])]
    lines.append(
        f"{'NAME':<14} {'PLUGGED':>8} {'MAX':>6} {'FLOOR':>6} {'W':>5} {'USED':>7} "
        f"{'AVAIL':>7} {'CACHE':>7} {'HOST':>7} {'TARGET':>7}  {'SIGNALS':<14} LAST ACTION"
    )
    for g in snap["guests"]:
        flag = "~" if not g["certain"] else ("*" if g.get("pin") else " ")
        if flag == " " and g.get("hook"):
            flag = "+"
        last = ""
        if g.get("last_actions"):
            a = g["last_actions"][-1]
            sign = "-" if a["op"] == "unplug" else "+"
            last = f"{sign}{format_size(a['kib'] * 1024)} {_age(a['t'])} ago"
            if not a["ok"]:
                last += " FAILED"
        state = "booting" if g.get("booting") else ""
        sig = q(",".join(g.get("signals", [])) or state or "-")
        lines.append(
            f"{q(g['name']):<14} {_mib(g['plugged']):>7}{flag} {_mib(g['max']):>6} "
            f"{_mib(g['floor']):>6} {q(g['weight']):>5} {_mib(g.get('used')):>7} "
            f"{_mib(g.get('available')):>7} {_mib(g.get('cache')):>7} "
            f"{_mib(g.get('host_usage')):>7} {_mib(g.get('target')):>7}  {sig:<14} {last}"
        )
    if not snap["guests"]:
        lines.append("(no running guests)")
    lines.append(
        "~ uncertain (reconciling)   * pinned by `warden mem set`   + plugs memory back "
        "itself when out of it (warden's kernel)"
    )
    return "\n".join(lines)


def _top(args: argparse.Namespace) -> int:
    client = _client()
    if args.once or args.json:
        snap = client.get("/memory")
        print(json.dumps(snap, indent=1) if args.json else table(snap))
        return 0
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    with Live(Text("..."), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                live.update(Text(table(client.get("/memory"))))
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("mem", help="memory of running guests: pin a size, plot the history")
    msub = p.add_subparsers(dest="mem_command", metavar="ACTION", required=True)
    s = msub.add_parser(
        "set",
        help="hold a running guest at SIZE (refused below its floor or working set, "
        "above its boot size or beyond the budget); 'auto' hands it back to the balancer",
    )
    s.add_argument("name")
    s.add_argument("size", help='e.g. "192M", or "auto"')
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_set)
    pl = msub.add_parser("plot", help="plugged and used memory per guest over time (PNG)")
    pl.add_argument("--out", required=True, help="the PNG file to write")
    pl.add_argument("--since", type=float, help="only the last SECONDS")
    pl.add_argument("--machine", action="append", help="only this guest (repeatable)")
    pl.set_defaults(func=_plot)
    t = sub.add_parser("top", help="live memory of every running guest and the balancer's moves")
    t.add_argument("--once", action="store_true", help="print once and exit")
    t.add_argument("--json", action="store_true", help="print the balancer's state as JSON")
    t.add_argument("--interval", type=float, default=1.0)
    t.set_defaults(func=_top)


__all__ = ["register", "table"]
