"""`warden jail audit NAME [--json]`: what a guest's host processes can reach and do."""

import argparse
import json
from typing import Any

from warden import termsafe
from warden.api.client import ApiClient
from warden.paths import layout


def _caps(p: dict[str, Any]) -> str:
    sets = p["capabilities"]
    if p["capability_count"] == 0:
        return "none (all five sets empty)"
    return " ".join(f"{k}={v}" for k, v in sets.items() if int(v, 16))


def _print(r: dict[str, Any]) -> None:
    # Process names, mounts and fd targets are read from the guest's host processes; a guest
    # kernel picks some of them (comm, paths): every field is escaped.
    q = termsafe.line
    print(f"machine   {q(r['name'])} ({q(r['state'])})")
    if not r["jail"]:
        print("jail      OFF (jail = false in the fleet file): the kernel runs as root")
    else:
        print(f"jail      {q(r['jail_state'])}")
    print(f"uid/gid   {r['uid'] if r['uid'] is not None else '-'}")
    cg = r["cgroup"]
    limits = ", ".join(f"{q(k)}={q(v)}" for k, v in cg["limits"].items())
    print(f"cgroup    {q(cg['path'])}  [{limits}]")
    if r.get("kernel_pid") is None:
        print("not running: nothing more to audit")
        return
    s = r["summary"]
    nnp = "yes" if s["no_new_privs"] else "NO"
    print(
        f"processes {s['processes']}, uids {s['uids']}, capabilities {s['capabilities']}, "
        f"no_new_privs {nnp}, seccomp {q(','.join(s['seccomp']))}"
    )
    print("namespaces (guest vs host):")
    for kind, ns in r["namespaces"].items():
        print(f"  {q(kind):<7} {'separate' if ns['separate'] else 'SHARED  '}  {q(ns['guest'])}")
    root = r["root"]
    if root["host_root"]:
        print("root      the HOST's / (no jail)")
    else:
        entries = root["entries"]
        print(f"root      {len(entries)} entries under the kernel's root")
        for e in entries:
            print(f"  /{q(e)}")
    cwd = r["cwd"]
    print(
        f"cwd       {q(cwd['path'])}" + ("" if cwd["entries"] is None else " (not under the root)")
    )
    for e in cwd["entries"] or []:
        print(f"  ./{q(e)}")
    print("mounts:")
    for mnt in r["mounts"]:
        print(f"  {q(mnt)}")
    print("processes:")
    for p in r["processes"]:
        print(
            f"  {p['pid']:>7} {q(p['name']):<12} uid {p['uid']} gid {p['gid']} "
            f"groups {q(p['groups'])} nnp {int(p['no_new_privs'])} seccomp {q(p['seccomp'])}"
        )
        print(f"          caps: {q(_caps(p))}")
        fds = [
            f"{f['fd']}={q(f['target'])}" + (f" [{q(f['host_file'])}]" if "host_file" in f else "")
            for f in p["fds"]
        ]
        print("          fds: " + ", ".join(fds))


def _audit(args: argparse.Namespace) -> int:
    report = ApiClient(layout()).get(f"/machines/{args.name}/jail")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print(report)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("jail", help="inspect guests' jails")
    jsub = p.add_subparsers(dest="jail_command", metavar="ACTION", required=True)
    a = jsub.add_parser(
        "audit", help="uid, capabilities, namespaces, seccomp, files and fds of a guest"
    )
    a.add_argument("name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_audit)
