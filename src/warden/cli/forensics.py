"""`warden timeline`, `warden evidence` and `warden recycle`: a honeypot operator's incident.

    timeline NAME [--boot ID | --since SNAPSHOT] [--sync] [--json | --html FILE]
    evidence NAME [--out FILE] [--sync]      pack and sign (the daemon copies the disk)
    evidence verify FILE [--key PUB.pem]     every sum and the signature; names what fails
    evidence unpack FILE DIR                 verify, then write the members and disk.cow
    recycle NAME [--no-sync] [--wait-evidence]   evidence kept, disk dropped, booted fresh

`timeline` asks the daemon (it copies a running guest's disk while the guest is paused); with
no daemon it reads the files itself (offline: a guest's disk that a kernel still holds is
left out, with a note). `evidence verify|unpack` work on the file alone.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from warden import termsafe
from warden.api.client import ApiClient
from warden.errors import DaemonNotRunning, WardenError
from warden.forensics import collect, evidence, render, signing
from warden.forensics import timeline as tl
from warden.paths import Layout, layout


def _entries(doc: list[dict[str, Any]]) -> list[tl.Entry]:
    out = []
    for e in doc:
        fields = {k: v for k, v in e.items() if k not in ("time", "time_us", "kind")}
        out.append(tl.Entry(int(e["time_us"]), str(e["kind"]), fields))
    return out


def _offline(lay: Layout, args: argparse.Namespace) -> dict[str, Any]:
    from warden.disk import diff as diffmod
    from warden.forensics import sources

    cow = lay.machine(args.name) / "disk.cow"

    def read_disk() -> diffmod.DiffReport:
        if not cow.exists():
            raise WardenError(f"{cow}: no disk")
        return diffmod.diff(cow)  # refused while a kernel holds it: no daemon to pause it

    store = sources.open_store(lay)
    try:
        t = collect.collect(
            lay, args.name, store, boot=args.boot, since=args.since, read_disk=read_disk
        )
    finally:
        store.close()
    return {"meta": t.meta(), "entries": t.as_json()}


def _timeline(args: argparse.Namespace) -> int:
    lay = layout()
    query = []
    if args.boot is not None:
        query.append(f"boot={args.boot}")
    if args.since:
        query.append(f"since={args.since}")
    if args.sync:
        query.append("sync=1")
    try:
        doc = ApiClient(lay, timeout=3600).get(
            f"/machines/{args.name}/timeline" + ("?" + "&".join(query) if query else "")
        )
    except DaemonNotRunning:
        doc = _offline(lay, args)
    entries, meta = doc["entries"], doc["meta"]
    if args.json:
        print(json.dumps(entries, indent=1))
    elif args.html:
        page = render.html_page(_entries(entries), meta)
        Path(args.html).write_text(page, encoding="utf-8")
        print(f"{args.html}: {len(entries)} entries ({termsafe.line(meta.get('scope'))})")
    else:
        for line in render.text_lines(_entries(entries)):
            print(line)
        disk = meta.get("disk", {})
        paused = f", the guest paused {disk['paused_seconds']}s" if "paused_seconds" in disk else ""
        print(
            f"-- {meta['machine']} {meta['scope']}: {len(entries)} entries, "
            f"{', '.join(f'{k} {v}' for k, v in meta.get('counts', {}).items())}{paused}",
            file=sys.stderr,
        )
    return 0


def _evidence(args: argparse.Namespace) -> int:
    if args.what == "verify" and args.file:
        return _verify(Path(args.file), Path(args.key) if args.key else None, args.json)
    if args.what == "unpack" and args.file:
        if not args.dest:
            raise WardenError("evidence unpack FILE DIR: name the directory to write")
        return _unpack(Path(args.file), Path(args.dest), Path(args.key) if args.key else None)
    if args.file:
        raise WardenError(
            f"evidence {args.what} {args.file}: expected `evidence NAME [--out FILE]`, "
            "`evidence verify FILE` or `evidence unpack FILE DIR`"
        )
    body: dict[str, Any] = {"sync": args.sync}
    if args.out:
        out = Path(args.out).absolute()
        if out.exists():
            raise WardenError(f"{out} exists; warden never overwrites a file")
        body["out"] = str(out)
    r = ApiClient(layout(), timeout=3600).post(f"/machines/{args.what}/evidence", body)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(
        f"{r['path']}: {r['files']} files, {r['bytes']} bytes, signed by key {r['key_id']}; "
        f"the guest was paused {r['paused_seconds'] * 1000:.1f} ms for its disk"
    )
    return 0


def _verify(path: Path, key: Path | None, as_json: bool) -> int:
    v = evidence.verify(path, signing.pinned(layout(), key))
    if as_json:
        print(
            json.dumps(
                {
                    "path": str(path),
                    "ok": v.ok,
                    "problems": v.problems,
                    "files_checked": v.checked,
                    "key_id": v.key_id,
                    "pinned": v.pinned,
                },
                indent=1,
            )
        )
    else:
        for p in v.problems:
            print(f"FAIL {termsafe.line(p)}")
        if v.ok:
            m = v.manifest
            print(
                f"OK   {path}: {v.checked} files match their sums; signed by the pinned key "
                f"{v.key_id}; {termsafe.line(m.get('machine'))} boots {m.get('boots')}, "
                f"{termsafe.line(m.get('reason'))}, {m.get('created')}"
            )
    return 0 if v.ok else 1


def _unpack(path: Path, dest: Path, key: Path | None) -> int:
    v = evidence.verify(path, signing.pinned(layout(), key))
    if not v.ok:
        for p in v.problems:
            print(f"FAIL {termsafe.line(p)}")
        raise WardenError(f"{path} did not verify; nothing unpacked")
    written = evidence.unpack(path, dest)
    print(f"{dest}: {len(written)} files (disk/disk.cow rebuilt from its extents)")
    return 0


def _recycle(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    body = {"sync": not args.no_sync, "wait_evidence": args.wait_evidence}
    r = ApiClient(layout(), timeout=600).post(f"/machines/{args.name}/recycle", body)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    ev = r.get("evidence")
    where = (
        f"; evidence {ev.get('path') or ev.get('error')}"
        if isinstance(ev, dict)
        else ("; evidence is being packed into WARDEN_HOME/evidence/ (event evidence-kept)")
    )
    print(
        f"{args.name}: boot {r['old_boot']} dropped, booting pristine "
        f"({time.monotonic() - t0:.2f}s){where}"
    )
    return 0


def _pools(args: argparse.Namespace) -> int:
    r = ApiClient(layout()).get("/pools")
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    for pool, guests in r.items():
        for guest, g in guests.items():
            # the address came from the kernel (an IPv4 address), the names from the fleet
            print(f"{pool:12} {guest:24} {g['slot']:8} {termsafe.line(g.get('src') or '')}")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("timeline", help="one chronological record of a guest's boot")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--boot", type=int, help="default: the latest boot")
    which.add_argument("--since", metavar="SNAPSHOT", help="everything since this snapshot")
    p.add_argument(
        "--sync",
        action="store_true",
        help="flush a running guest's page cache to its disk first (sysrq s: leaves a line in "
        "its kernel log)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="a JSON list of entries")
    out.add_argument("--html", metavar="FILE", help="one self-contained page")
    p.set_defaults(func=_timeline)

    p = sub.add_parser(
        "evidence", help="pack a guest's boot into a signed archive; verify or unpack one"
    )
    p.add_argument("what", metavar="NAME|verify|unpack")
    p.add_argument("file", nargs="?", help="verify/unpack: the archive")
    p.add_argument("dest", nargs="?", help="unpack: the directory to create")
    p.add_argument("--out", help="the archive to write (default WARDEN_HOME/evidence/...)")
    p.add_argument("--sync", action="store_true", help="flush the guest's page cache first")
    p.add_argument("--key", help="verify: the public key to trust (default: this home's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evidence)

    p = sub.add_parser("recycle", help="keep the evidence, drop the disk, boot pristine")
    p.add_argument("name")
    p.add_argument("--no-sync", action="store_true", help="do not flush the page cache first")
    p.add_argument(
        "--wait-evidence", action="store_true", help="return once the evidence is written"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_recycle)
    p = sub.add_parser("pools", help="each [[pool]]'s guests: off, booting, warm or whose")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_pools)
