"""`warden logs ls|verify|export|search|dump` and `warden replay`: the session logs.

These read the log files directly (docs/formats/session-log.md), so they work with no daemon
running; when one runs, they first ask it to write out what it has queued, so a live file is
read up to date.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from warden import termsafe
from warden.errors import DaemonNotRunning, WardenError
from warden.paths import Layout, layout
from warden.sessionlog import codec as sl
from warden.sessionlog import export, replay, ttyview
from warden.sessionlog import search as searchmod
from warden.sessionlog import store as logstore
from warden.sessionlog import verify as logverify


def _flush_daemon(lay: Layout) -> None:
    from warden.api.client import ApiClient

    if not lay.socket.exists():
        return
    try:
        ApiClient(lay, timeout=60).post("/logs/flush")
    except (DaemonNotRunning, WardenError, OSError):
        pass  # no daemon (or an older one): the files are what there is


def _key(lay: Layout) -> bytes:
    return logstore.load_key(lay)


def _when(us: int) -> str:
    if not us:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us / 1e6)) + f".{us % 1000000:06d}"


def _records(
    lay: Layout, name: str, line: str, boot: int | None
) -> tuple[list[sl.Record], dict[str, Any]]:
    records, meta, problems = logstore.read_boot(lay, name, line, boot)
    for text in problems:
        print(f"warden: {text}", file=sys.stderr)
    return records, meta


# ---- ls ---------------------------------------------------------------------------------
def _ls(args: argparse.Namespace) -> int:
    lay = layout()
    rows: list[dict[str, Any]] = []
    for ref in logstore.find(lay, args.name):
        st = ref.path.stat()
        try:
            with sl.open_raw(ref.path) as f:
                header = sl.LogReader(f, None, str(ref.path)).header
            started = int(header.meta.get("created_us", 0))
        except (WardenError, OSError, EOFError):
            started = 0
        state = "live" if ref.is_live() else ("closed" if ref.compressed else "open")
        rows.append(
            {
                "machine": ref.machine,
                "line": ref.line,
                "boot": ref.boot,
                "part": ref.part,
                "archived": ref.archived,
                "state": state,
                "started_us": started,
                "modified": st.st_mtime,
                "bytes": st.st_size,
                "path": str(ref.path),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no session logs" + (f" of {args.name}" if args.name else ""))
        return 0
    print(f"{'MACHINE':<16} {'LINE':<5} {'BOOT':>5} {'STATE':<7} {'STARTED':<19} {'SIZE':>10}")
    for r in rows:
        label = r["machine"] + (" (archived)" if r["archived"] else "")
        boot = f"{r['boot']}" + (f".{r['part']}" if r["part"] > 1 else "")
        print(
            f"{label:<16} {r['line']:<5} {boot:>5} {r['state']:<7} "
            f"{_when(r['started_us'])[:19]:<19} {r['bytes']:>10}"
        )
    return 0


# ---- verify -----------------------------------------------------------------------------
def _verify(args: argparse.Namespace) -> int:
    lay = layout()
    _flush_daemon(lay)
    dirs = [d for d in logstore.machine_dirs(lay) if args.name is None or d[0] == args.name]
    key = _key(lay) if dirs else b""
    results = [
        row
        for machine, d, archived in dirs
        for row in logverify.verify_dir(
            machine, d, archived, key, logstore.LogRef.is_live, args.line, args.boot
        )
    ]
    if not results:
        who = f" of {args.name}" if args.name else ""
        raise WardenError(f"no session logs{who} to verify in {lay.home}")
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": str(c.path),
                        "machine": c.machine,
                        "line": c.line,
                        "boot": c.boot,
                        "part": c.part,
                        "archived": c.archived,
                        "status": c.verdict.status,
                        "ok": c.verdict.ok,
                        "records": c.verdict.records,
                        "bad_record": c.verdict.bad_seq,
                        "message": c.verdict.message,
                    }
                    for c in results
                ],
                indent=1,
            )
        )
    else:
        for c in results:
            v = c.verdict
            word = "OK  " if v.ok else "FAIL"
            print(f"{word} {c.label}: {v.status}: {v.message}")
            if not v.ok:
                print(f"     {c.path}")
    return 0 if all(c.verdict.ok for c in results) else 1


# ---- export -----------------------------------------------------------------------------
def _export(args: argparse.Namespace) -> int:
    lay = layout()
    _flush_daemon(lay)
    name, _, line = args.name.partition(":")
    records, meta = _records(lay, name, line or args.line, args.boot)
    out = open(args.output, "wb") if args.output else None  # noqa: SIM115
    try:
        write = out.write if out is not None else sys.stdout.buffer.write
        if args.format == "asciicast":
            for text in export.asciicast(records, meta, with_input=not args.no_input, tty=args.tty):
                write(text.encode())
        elif args.format == "text":
            write(export.text(records, args.direction, args.tty).encode())
            write(b"\n")
        else:
            for chunk in export.raw(records, args.direction, args.tty):
                write(chunk)
    finally:
        if out is not None:
            out.close()
        else:
            sys.stdout.flush()
    return 0


# ---- search -----------------------------------------------------------------------------
def _search(args: argparse.Namespace) -> int:
    lay = layout()
    _flush_daemon(lay)
    needle = args.string.encode()
    if not needle:
        raise WardenError("search: the string is empty")
    refs = logstore.find(lay, args.machine, args.line, args.boot)
    key = _key(lay) if refs else None
    hits = searchmod.search_refs(
        refs,
        key,
        needle,
        ignore_case=args.ignore_case,
        typed=not (args.printed or args.executed),
        printed=not (args.typed or args.executed),
        executed=not (args.typed or args.printed),
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "machine": h.machine,
                        "line": h.line,
                        "boot": h.boot,
                        "part": h.part,
                        "direction": h.direction,
                        "seq": h.seq,
                        "time_us": h.time_us,
                        "time": _when(h.time_us),
                        "user": h.user,
                        "context": h.context.decode("utf-8", "replace"),
                        "path": h.path,
                        "offset": h.offset,
                    }
                    for h in hits
                ],
                indent=1,
            )
        )
    else:
        for h in hits:
            who = f" by {h.user}" if h.direction == "typed" and h.user else ""
            who = " (exec)" if h.direction == "executed" else who
            ctx = h.context_text()
            print(
                f"{_when(h.time_us)}  {h.machine} {h.line} boot {h.boot}  {h.direction}"
                f"{termsafe.line(who)}  record {h.seq} (--at {h.offset}): …{termsafe.line(ctx)}…"
            )
    return 0 if hits else 1


# ---- dump -------------------------------------------------------------------------------
def _dump(args: argparse.Namespace) -> int:
    lay = layout()
    _flush_daemon(lay)
    name, _, line = args.name.partition(":")
    records, _meta = _records(lay, name, line or args.line, args.boot)
    view = ttyview.TtyView()
    for r in records:
        item: dict[str, Any] = {"seq": r.seq, "time_us": r.time_us, "type": r.kind}
        if r.type == sl.TTYLOG:
            try:
                item.update(view.describe(view.decode(r.payload)))
            except WardenError as e:
                item["damaged"] = str(e)
        elif r.type in (sl.OUTPUT, sl.INPUT):
            item["data"] = r.data.decode("latin-1")
            if r.type == sl.INPUT:
                item["user"] = r.user
        elif r.type in (sl.EVENT, sl.END):
            item.update(r.event)
        if args.json:
            print(json.dumps(item))
        else:
            rest = {k: v for k, v in item.items() if k not in ("seq", "time_us", "type")}
            print(f"{r.seq:>7} {_when(r.time_us)} {termsafe.line(r.kind):<10} {json.dumps(rest)}")
    return 0


# ---- replay -----------------------------------------------------------------------------
def _replay(args: argparse.Namespace) -> int:
    lay = layout()
    _flush_daemon(lay)
    name, _, line = args.name.partition(":")
    if args.start and args.at:
        raise WardenError("replay: give --from or --at, not both")
    try:
        if args.at:
            start = replay.parse_time(args.at, "--at")
        else:
            start = replay.parse_time(args.start) if args.start else 0.0
    except ValueError as e:
        raise WardenError(str(e)) from None
    if args.speed <= 0:
        raise WardenError(f"--speed {args.speed}: expected a number above 0, e.g. 2 or 0.5")
    records, meta = _records(lay, name, line or args.line, args.boot)
    if sys.stderr.isatty():
        what = termsafe.line(f"{meta.get('machine')} {meta.get('line')} boot {meta.get('boot')}")
        print(
            f"[warden: replaying {what} from {_when(records[0].time_us) if records else '-'}; "
            "Ctrl-C stops]",
            file=sys.stderr,
        )
    steps = replay.schedule(
        records,
        speed=args.speed,
        start=start,
        max_idle=args.max_idle if args.max_idle > 0 else None,
        events=args.events,
        tty=args.tty,
    )
    replay.play(steps, sys.stdout.fileno(), raw=args.raw)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("logs", help="session logs: list, verify, export, search")
    lsub = p.add_subparsers(dest="logs_command", metavar="COMMAND", required=True)

    q = lsub.add_parser("ls", help="list session logs (all guests, or one)")
    q.add_argument("name", nargs="?")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_ls)

    q = lsub.add_parser("verify", help="check the HMAC chain of session logs")
    q.add_argument("name", nargs="?", help="a guest (default: every log)")
    q.add_argument("--line")
    q.add_argument("--boot", type=int)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_verify)

    q = lsub.add_parser("export", help="export one log: asciicast v2, plain text or raw bytes")
    q.add_argument("name", help="NAME or NAME:LINE")
    q.add_argument("--line", default="con0")
    q.add_argument("--boot", type=int, help="default: the latest")
    q.add_argument("--format", choices=("asciicast", "text", "raw"), default="asciicast")
    q.add_argument(
        "--direction",
        choices=("out", "in", "both"),
        default="out",
        help="text/raw: what the guest printed (out), what was typed (in), or both",
    )
    q.add_argument("--no-input", action="store_true", help="asciicast: leave out 'i' events")
    q.add_argument("--tty", type=int, help="tty logs: only this tty id's session (logs dump)")
    q.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    q.set_defaults(func=_export)

    q = lsub.add_parser("search", help="find where a string was typed or printed")
    q.add_argument("string")
    q.add_argument("--machine")
    q.add_argument("--line")
    q.add_argument("--boot", type=int)
    q.add_argument("-i", "--ignore-case", action="store_true")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--typed", action="store_true", help="only what clients typed")
    which.add_argument("--printed", action="store_true", help="only what guests printed")
    which.add_argument(
        "--executed", action="store_true", help="tty logs: only the argv of programs run"
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_search)

    q = lsub.add_parser("dump", help="every record of one log, one per line")
    q.add_argument("name", help="NAME or NAME:LINE")
    q.add_argument("--line", default="con0")
    q.add_argument("--boot", type=int, help="default: the latest")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_dump)

    p = sub.add_parser("replay", help="play a session log back with its timing")
    p.add_argument("name", help="NAME or NAME:LINE")
    p.add_argument("--line", default="con0")
    p.add_argument("--boot", type=int, help="default: the latest")
    p.add_argument("--speed", type=float, default=1.0, help="2: twice as fast")
    p.add_argument(
        "--from", dest="start", help="start at T (seconds or [H:]M:S); earlier output at once"
    )
    p.add_argument(
        "--at",
        metavar="OFFSET",
        help="start playing at the record OFFSET seconds (µs precision) after the log's first: "
        "the `offset` of `warden timeline` and `warden logs search`; earlier output at once",
    )
    p.add_argument(
        "--max-idle", type=float, default=2.0, help="shorten pauses to this (0: keep them)"
    )
    p.add_argument(
        "--events", action="store_true", help="show attach/detach/... (tty logs: exec...) inline"
    )
    p.add_argument("--tty", type=int, help="tty logs: only this tty id's session (logs dump)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="write the guest's bytes as recorded (default: OSC/DCS/APC strings and terminal "
        "queries are removed, so a hostile guest cannot drive your terminal)",
    )
    p.set_defaults(func=_replay)


__all__ = ["register"]
