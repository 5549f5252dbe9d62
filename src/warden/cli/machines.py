"""Machine commands: up, daemon, apply, ls, start/stop/kill/..., console, mconsole, events."""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from warden import termsafe
from warden.api.client import ApiClient
from warden.errors import WardenError
from warden.paths import layout
from warden.units import format_size


def _client() -> ApiClient:
    return ApiClient(layout())


def _up(args: argparse.Namespace) -> int:
    from warden.app.run import run
    from warden.spec import fleet

    path = Path(args.fleet)
    fleet.load(path)  # validate before anything starts: errors name the file and key
    return run(layout(), path, stop_guests_on_exit=True, prune=args.prune)


def _daemon(args: argparse.Namespace) -> int:
    from warden.app.run import run
    from warden.cli.cluster import daemon_config

    cluster = daemon_config(args)
    return run(layout(), None, stop_guests_on_exit=args.stop_guests, cluster=cluster)


def _apply(args: argparse.Namespace) -> int:
    from warden.spec import fleet

    path = Path(args.fleet)
    fleet.load(path)  # local validation first: a bad file never reaches the daemon
    report = _client().post(
        "/fleet", {"text": path.read_text(), "source": str(path.absolute()), "prune": args.prune}
    )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k in ("added", "changed", "removed", "started"):
            if report.get(k):
                print(f"{k}: {', '.join(termsafe.line(n) for n in report[k])}")
        if not any(report.values()):
            print("no change")
    return 0


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _ls(args: argparse.Namespace) -> int:
    machines: list[dict[str, Any]] = _client().get("/machines")
    if args.json:
        print(json.dumps(machines, indent=1))
        return 0
    if not machines:
        print("no machines; apply a fleet file with `warden apply FLEET` or `warden up FLEET`")
        return 0
    print(f"{'NAME':<16} {'OWNER':<10} {'STATE':<9} {'MEMORY':>7} {'UPTIME':>7} {'PID':>8}  NOTE")
    for mm in machines:
        note = ""
        last = mm.get("last_exit")
        if mm["state"] in ("stopped", "crashed") and last:
            note = str(last.get("reason", ""))  # may quote the guest (a panic message)
        elif mm.get("waiting"):
            note = str(mm["waiting"])  # a boot waiting for its slot (daemon/admission.py)
        elif mm["state"] == "paused" and mm.get("pause_reason") == "storage":
            note = "storage: WARDEN_HOME below its free-space floor; resumes when space returns"
        name, owner, state = (termsafe.line(mm[k]) for k in ("name", "owner", "state"))
        print(
            f"{name:<16} {owner:<10} {state:<9} {format_size(mm['memory']):>7} "
            f"{_fmt_uptime(mm.get('uptime')):>7} {mm.get('pid') or '-':>8}  {termsafe.line(note)}"
        )
    return 0


def _action(action: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"wait": not getattr(args, "no_wait", False)}
        if getattr(args, "timeout", None) is not None:
            body["timeout"] = args.timeout
        info = _client().post(f"/machines/{args.name}/{action}", body)
        if getattr(args, "json", False):
            print(json.dumps(info, indent=1))
        else:
            print(f"{termsafe.line(info['name'])}: {termsafe.line(info['state'])}")
        return 0

    return handler


def _console(args: argparse.Namespace) -> int:
    from warden.cli import console

    name, _, line = args.name.partition(":")
    return console.run(
        layout(),
        name,
        line or args.line,
        args.spy,
        args.force,
        args.timeout,
        args.scrollback,
        raw=args.raw,
    )


def _mconsole(args: argparse.Namespace) -> int:
    reply = _client().post(f"/machines/{args.name}/mconsole", {"command": " ".join(args.command)})
    text = termsafe.text(reply["reply"])  # the guest kernel wrote it (`proc` reads its files)
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _events(args: argparse.Namespace) -> int:
    q = f"?since={args.since}" + (f"&machine={args.name}" if args.name else "")
    events = _client().get(f"/events{q}")
    if args.json:
        print(json.dumps(events, indent=1))
        return 0
    for ev in events:
        ts = time.strftime("%H:%M:%S", time.localtime(ev.pop("ts")))
        ev.pop("id", None)
        who, kind = ev.pop("machine") or "warden", ev.pop("kind")
        print(f"{ts} {termsafe.line(who)}: {termsafe.line(kind)} {termsafe.fields(ev)}".rstrip())
    return 0


def _status(args: argparse.Namespace) -> int:
    st = _client().get("/status")
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        for k, v in st.items():
            print(f"{termsafe.line(k)}: {termsafe.line(v)}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from warden import doctor

    return doctor.run(layout(), args.json)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("up", help="run the daemon in the foreground with a fleet file")
    p.add_argument("fleet", help="fleet file (TOML)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="destroy the machines of an earlier fleet that this file no longer lists",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser("daemon", help="run the daemon in the foreground (guests outlive it)")
    p.add_argument("--stop-guests", action="store_true", help="stop every guest on exit")
    # Joining a cluster (warden.cli.cluster.daemon_config reads these; docs/formats/cluster.md)
    p.add_argument(
        "--cluster",
        dest="cluster_urls",
        metavar="URL[,URL...]",
        help="join the cluster whose etcd members these are",
    )
    p.add_argument("--host-name", help="this host's name in the cluster")
    p.add_argument("--lease-ttl", type=int, default=10, help="seconds (default 10)")
    p.add_argument("--budget", help="memory for guests, e.g. 512M (default: MemTotal - 1G)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a host label (machines ask for one with host_labels)",
    )
    p.set_defaults(func=_daemon)

    p = sub.add_parser("apply", help="apply a fleet file to the running daemon")
    p.add_argument("fleet")
    p.add_argument(
        "--prune", action="store_true", help="kill and destroy machines the file no longer lists"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_apply)

    p = sub.add_parser("ls", help="list machines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_ls)

    helps = {
        "create": "make a machine's files (its COW disk over the shared base)",
        "start": "boot a machine",
        "stop": "shut a machine down (ctrl-alt-del, then halt, then kill)",
        "kill": "kill every process of a machine at once (cgroup.kill)",
        "reset": "drop a stopped machine's COW disk: pristine at next boot",
        "destroy": "remove a stopped machine's files (session logs are archived)",
        "pause": "freeze every process of a machine",
        "resume": "thaw a paused machine",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
        if action in ("start", "stop", "kill"):
            p.add_argument("--no-wait", action="store_true", help="return at once")
        if action in ("start", "stop"):
            p.add_argument("--timeout", type=float, help="seconds (stop: before halt)")
        p.set_defaults(func=_action(action))

    p = sub.add_parser("console", help="attach to a guest's console or serial line")
    p.add_argument("name", help="NAME or NAME:LINE")
    p.add_argument("--line", default="con0", help="con0 (default) or sslN")
    p.add_argument("--spy", action="store_true", help="watch only; keystrokes go nowhere")
    p.add_argument("--force", action="store_true", help="take the line over from its writer")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="without a TTY: seconds to keep printing after stdin ends",
    )
    p.add_argument("--scrollback", type=int, default=0, help="replay up to N recent bytes")
    p.add_argument(
        "--raw",
        action="store_true",
        help="pass the guest's bytes untouched (default for all but your own interactive "
        "writer session: OSC/DCS/APC strings and terminal queries are removed)",
    )
    p.set_defaults(func=_console)

    p = sub.add_parser("mconsole", help="send a UML management console command (admins)")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=_mconsole)

    p = sub.add_parser("events", help="the daemon's event log")
    p.add_argument("name", nargs="?")
    p.add_argument("--since", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_events)

    p = sub.add_parser("status", help="daemon status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = sub.add_parser("doctor", help="check this host: kernel, shim, cgroups, tools")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_doctor)


__all__ = ["register", "WardenError"]
