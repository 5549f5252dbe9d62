"""`warden disk ...`: copy-on-write disks, by path (local: no daemon needed).

create COW --backing BASE          a new, empty COW file (the kernel accepts it)
inspect COW [--json]               header, backing file check, written sectors, disk use
merge COW OUT | merge COW --in-place   backing + COW as one image (like uml_moo [-d])
rebase COW --backing NEWPATH [--ignore-mtime]   the backing file moved
snapshot NAME --cow COW --mconsole SOCKET   snapshot a running guest (stop, copy, go)
snapshots --cow COW [--json]       list its snapshots
restore NAME --cow COW             put a snapshot back (guest stopped)
snapshot-rm NAME --cow COW         delete a snapshot
diff --cow COW [--base BASE] [--json]   files created, modified and deleted

A COW path that is a machine's disk (WARDEN_HOME/machines/NAME/disk.cow, or a snapshot of it)
is always used over the base warden recorded for that machine, never over the path its header
names (the guest can write it): warden.disk.recorded. On any other path a --backing (or --base)
that is not the file the header names is refused with both.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from warden.api.client import ApiClient
from warden.disk import create, inspect, merge, rebase, recorded, snapshot
from warden.disk import diff as diffmod
from warden.disk.backing import show_time
from warden.disk.errors import DiskError
from warden.errors import WardenError
from warden.paths import layout
from warden.progress import progress
from warden.uml import mconsole
from warden.units import format_size


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1))


def _create(args: argparse.Namespace) -> int:
    h = create.create(Path(args.cow), Path(args.backing))
    print(
        f"created {args.cow}: version {h.version} COW over {diffmod.display(h.backing)} "
        f"({format_size(h.size)}), data at offset {h.data_offset}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    cow_path = Path(args.cow)
    rec = recorded.lookup(cow_path)
    i = inspect.inspect(cow_path, Path(args.backing) if args.backing else None, rec)
    if args.json:
        _print_json(i.as_json())
        return 0
    h, b = i.header, i.backing
    print(f"COW file       {i.path} (version {h.version}, {h.layout.value} layout)")
    print(f"backing file   {diffmod.display(h.backing)} (as the header names it)")
    if rec is not None:
        print(f"  recorded     {rec.base} (machine {rec.machine}: the file warden uses)")
    elif b.path != h.backing_path:
        print(f"  checked      {b.path}")
    if not b.exists:
        print("  MISSING      the file does not exist (see `warden disk rebase`)")
    else:
        ok = {True: "ok", False: "MISMATCH"}
        print(f"  size         recorded {h.size}, actual {b.size}  {ok[b.size_ok]}")
        print(
            f"  mtime        recorded {show_time(h.mtime)}, actual {show_time(b.mtime or 0)}  "
            f"{ok[b.mtime_ok]}"
        )
    print(f"sector size    {h.sectorsize} (alignment {h.alignment})")
    if i.sectors_written is None or i.percent_written is None or i.bytes_written is None:
        print(f"written        unknown (of {h.sectors} sectors)")
    else:
        print(
            f"written        {i.sectors_written} of {h.sectors} sectors "
            f"({i.percent_written:.2f}%, {format_size(i.bytes_written)})"
        )
    print(
        f"layout         bitmap at {h.bitmap_offset} ({h.bitmap_len} bytes), data at "
        f"{h.data_offset}"
    )
    print(f"size on disk   {format_size(i.disk_usage)} (length {format_size(i.file_length)})")
    print(f"in use         {f'by pid {i.in_use_by}' if i.in_use_by else 'no'}")
    for w in i.warnings:
        print(f"warning        {w}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    cow_path = Path(args.cow)
    backing = Path(args.backing) if args.backing else None
    if args.in_place and args.out:
        raise DiskError("give either OUT or --in-place, not both")
    if not args.in_place and not args.out:
        raise DiskError("merge needs OUT (a new image file) or --in-place")
    rec = recorded.lookup(cow_path)
    with progress(f"merge {cow_path.name}") as p:
        if args.in_place:
            r = merge.merge_in_place(cow_path, backing_path=backing, progress=p, recorded=rec)
        else:
            r = merge.merge(
                cow_path, Path(args.out), backing_path=backing, progress=p, recorded=rec
            )
    print(
        f"merged {r.cow} into {r.output}: {format_size(r.size)} image, "
        f"{format_size(r.from_backing)} from the backing file, {format_size(r.from_cow)} from "
        f"the COW file, {r.seconds:.2f}s"
    )
    if args.in_place:
        print(
            f"note: {r.backing} changed; every COW file over it (this one included) no longer "
            "matches it and will be refused",
            file=sys.stderr,
        )
    return 0


def _rebase(args: argparse.Namespace) -> int:
    cow_path = Path(args.cow)
    r = rebase.rebase(
        cow_path,
        Path(args.backing),
        check_mtime=not args.ignore_mtime,
        recorded=recorded.lookup(cow_path),
    )
    print(
        f"rebased {r.path}: backing file {diffmod.display(r.old.backing)} -> "
        f"{diffmod.display(r.new.backing)} ({r.bytes_written} header bytes written)"
    )
    return 0


def _api() -> ApiClient:
    return ApiClient(layout())


def _need_one(args: argparse.Namespace, what: str) -> None:
    if bool(getattr(args, "machine", None)) == bool(args.cow):
        raise WardenError(f"{what}: give a machine name or --cow PATH (one of the two)")


def _snapshot(args: argparse.Namespace) -> int:
    if not args.cow:
        # By machine: the daemon owns its mconsole. The positional is the machine here.
        body = {"snapshot": args.name} if args.name else {}
        s = _api().post(f"/machines/{args.target}/snapshots", body)
        print(
            f"snapshot {s['name']} of {args.target}: {s['path']}, guest paused "
            f"{s['paused_seconds'] * 1000:.0f} ms"
        )
        return 0
    if not args.mconsole:
        raise WardenError("snapshot --cow PATH also needs --mconsole SOCKET (the guest's)")
    args.name = args.name or args.target
    cow_path = Path(args.cow)
    store = Path(args.store) if args.store else None
    with tempfile.TemporaryDirectory(prefix="warden-mc-") as tmp:
        with mconsole.Client(Path(args.mconsole), Path(tmp) / "reply") as client:
            with progress(f"snapshot {args.name}") as p:
                s = snapshot.take(
                    cow_path,
                    client,
                    args.name,
                    store=store,
                    progress=p,
                    recorded=recorded.lookup(cow_path),
                )
    print(
        f"snapshot {s.name} of {cow_path}: {s.cow} ({s.sectors_written} sectors written), "
        f"guest paused {s.paused_seconds * 1000:.0f} ms"
    )
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    _need_one(args, "snapshots")
    if args.machine:
        rows: list[dict[str, Any]] = _api().get(f"/machines/{args.machine}/snapshots")
    else:
        store = Path(args.store) if args.store else None
        snaps = snapshot.list_snapshots(Path(args.cow), store)
        rows = [s.as_json() | {"path": str(s.cow)} for s in snaps]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no snapshots of {args.machine or args.cow}")
        return 0
    print(f"{'NAME':<20} {'CREATED':<26} {'WRITTEN':>9} {'PAUSED':>8}")
    for r in rows:
        print(
            f"{r['name']:<20} {r['created']:<26} {format_size(r['sectors_written'] * 512):>9} "
            f"{r['paused_seconds'] * 1000:>6.0f}ms"
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    _need_one(args, "restore")
    if args.machine:
        _api().post(f"/machines/{args.machine}/snapshots/{args.name}/restore")
        print(f"restored snapshot {args.name} of {args.machine}")
        return 0
    store = Path(args.store) if args.store else None
    cow_path = Path(args.cow)
    with progress(f"restore {args.name}") as p:
        s = snapshot.restore(
            cow_path, args.name, store, progress=p, recorded=recorded.lookup(cow_path)
        )
    print(f"restored snapshot {s.name} ({s.created}) into {args.cow}")
    return 0


def _snapshot_rm(args: argparse.Namespace) -> int:
    _need_one(args, "snapshot-rm")
    if args.machine:
        _api().call("DELETE", f"/machines/{args.machine}/snapshots/{args.name}")
        print(f"deleted snapshot {args.name} of {args.machine}")
        return 0
    store = Path(args.store) if args.store else None
    snapshot.delete(Path(args.cow), args.name, store)
    print(f"deleted snapshot {args.name} of {args.cow}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    _need_one(args, "diff")
    if args.machine:
        report: dict[str, Any] = _api().get(f"/machines/{args.machine}/diff")
    else:
        cow_path = Path(args.cow)
        rec = recorded.lookup(cow_path)
        with progress("diff") as p:
            r = diffmod.diff(
                cow_path, Path(args.base) if args.base else None, progress=p, recorded=rec
            )
        report = r.as_json()
    if args.json:
        _print_json(report)
        return 0
    marks = {"created": "+", "deleted": "-", "modified": "M"}
    for c in report["changes"]:
        size = "" if c["size"] is None else format_size(c["size"])
        gone = c["old_size"] is not None and c["kind"] == "deleted"
        old = format_size(c["old_size"]) if gone else ""
        detail = f" ({', '.join(c['changes'])})" if c["changes"] else ""
        link = f" -> {c['target']}" if c["target"] is not None else ""
        print(f"{marks[c['kind']]} {c['type']:<8} {size or old:>7}  {c['path']}{link}{detail}")
    print(
        f"{report['created']} created, {report['modified']} modified, "
        f"{report['deleted']} deleted ({report['blocks_written']} blocks written, "
        f"{report['seconds']:.2f}s)",
        file=sys.stderr,
    )
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "disk", help="copy-on-write disks: create, inspect, merge, rebase, snapshot, diff"
    )
    d = p.add_subparsers(dest="disk_command", metavar="ACTION", required=True)

    c = d.add_parser("create", help="a new, empty COW file over a base image")
    c.add_argument("cow", help="the COW file to make (must not exist)")
    c.add_argument("--backing", required=True, help="the base image")
    c.set_defaults(func=_create)

    i = d.add_parser("inspect", help="what a COW file holds; does its backing file match?")
    i.add_argument("cow")
    i.add_argument("--backing", help="check this file instead of the recorded backing path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)

    m = d.add_parser("merge", help="backing file + COW file as one image (like uml_moo)")
    m.add_argument("cow")
    m.add_argument("out", nargs="?", help="the new image (must not exist)")
    m.add_argument(
        "--in-place",
        action="store_true",
        help="write into the backing file itself (like uml_moo -d); other COWs over it break",
    )
    m.add_argument("--backing", help="the backing file, if not where the header says (-b)")
    m.set_defaults(func=_merge)

    r = d.add_parser("rebase", help="the backing file moved: point the COW header at it")
    r.add_argument("cow")
    r.add_argument("--backing", required=True, help="the backing file's new path")
    r.add_argument(
        "--ignore-mtime",
        action="store_true",
        help="accept a different mtime (a copy without -p) and record the new one",
    )
    r.set_defaults(func=_rebase)

    s = d.add_parser(
        "snapshot",
        help="snapshot a guest's COW disk (running: stop, copy, go)",
        description="warden disk snapshot MACHINE [--name SNAP], through the daemon; or "
        "warden disk snapshot SNAP --cow FILE --mconsole SOCKET for a guest warden does not run",
    )
    s.add_argument("target", help="the machine (or, with --cow, the snapshot's name)")
    s.add_argument("--name", help="the snapshot's name (default: the date and time)")
    s.add_argument("--cow", help="a running guest's COW file (instead of a machine)")
    s.add_argument("--mconsole", help="with --cow: the guest's mconsole socket")
    s.add_argument("--store", help="where snapshots live (default: COW's dir/snapshots)")
    s.set_defaults(func=_snapshot)

    ls = d.add_parser("snapshots", help="list the snapshots of a machine or a COW file")
    ls.add_argument("machine", nargs="?")
    ls.add_argument("--cow")
    ls.add_argument("--store")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_snapshots)

    rs = d.add_parser("restore", help="put a snapshot back as the COW file (guest stopped)")
    rs.add_argument("name", help="the snapshot")
    rs.add_argument("-m", "--machine", help="the machine (instead of --cow)")
    rs.add_argument("--cow")
    rs.add_argument("--store")
    rs.set_defaults(func=_restore)

    rm = d.add_parser("snapshot-rm", help="delete a snapshot")
    rm.add_argument("name", help="the snapshot")
    rm.add_argument("-m", "--machine", help="the machine (instead of --cow)")
    rm.add_argument("--cow")
    rm.add_argument("--store")
    rm.set_defaults(func=_snapshot_rm)

    df = d.add_parser("diff", help="files the guest created, modified and deleted")
    df.add_argument("machine", nargs="?", help="the machine (running or not)")
    df.add_argument("--cow", help="a COW file (or a snapshot's) instead of a machine")
    df.add_argument("--base", help="the base image (default: the backing file it records)")
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=_diff)
