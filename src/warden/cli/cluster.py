"""Cluster commands: `warden --cluster URL apply|ls|hosts|drain|move` (they talk to etcd, not
to a daemon: any host, or a laptop that reaches etcd, can run them), and the
ClusterConfig of `warden daemon --cluster` (whose options warden.cli.machines declares)."""

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from warden import termsafe
from warden.errors import WardenError
from warden.units import format_size

T = TypeVar("T")


def _with_etcd(args: argparse.Namespace, fn: "Callable[[Any], Awaitable[T]]") -> T:
    from warden.cluster.etcd import ADMIN_CALL_TIMEOUT, Etcd

    if not args.cluster:
        raise WardenError(f"warden {args.command} needs --cluster URL (an etcd client URL)")

    async def go() -> T:
        etcd = Etcd(args.cluster, timeout=ADMIN_CALL_TIMEOUT)
        try:
            return await fn(etcd)
        finally:
            await etcd.close()

    return asyncio.run(go())


def apply(args: argparse.Namespace) -> int:
    from warden.cluster import admin

    path = Path(args.fleet)
    try:
        text = path.read_text()
    except OSError as e:
        raise WardenError(f"{path}: cannot read: {e.strerror}") from None
    report = _with_etcd(args, lambda etcd: admin.apply(etcd, text, str(path.absolute())))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k in ("added", "removed"):
            if report[k]:
                print(f"{k}: {', '.join(termsafe.line(n) for n in report[k])}")
        print("the cluster's fleet is set; the hosts place and start it")
    return 0


def ls(args: argparse.Namespace) -> int:
    from warden.cluster import admin

    rows = _with_etcd(args, admin.machines)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':<20} {'STATE':<10} {'HOST':<16} {'OWNER':<12} MEMORY")
    for r in rows:
        print(
            f"{termsafe.line(r['name']):<20} {r['state']:<10} {r['host'] or '-':<16} "
            f"{termsafe.line(r['owner']):<12} {format_size(r['memory'])}"
        )
    return 0


def hosts(args: argparse.Namespace) -> int:
    from warden.cluster import admin

    rows = _with_etcd(args, admin.hosts)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'HOST':<16} {'ALIVE':<6} {'BUDGET':>8} {'FREE':>8} MACHINES")
    for r in rows:
        flags = " (draining)" if r["draining"] else ""
        flags += " (leader)" if r["leader"] else ""
        budget = format_size(r["budget"]) if r["budget"] is not None else "-"
        free = format_size(r["free"]) if r["free"] is not None else "-"
        print(
            f"{r['name']:<16} {'yes' if r['alive'] else 'no':<6} {budget:>8} {free:>8} "
            f"{', '.join(r['machines']) or '-'}{flags}"
        )
    return 0


def drain(args: argparse.Namespace) -> int:
    from warden.cluster import admin

    _with_etcd(args, lambda etcd: admin.drain(etcd, args.host, undo=args.undo))
    print(f"{args.host}: {'no longer draining' if args.undo else 'draining'}")
    return 0


def move(args: argparse.Namespace) -> int:
    from warden.cluster import admin

    _with_etcd(args, lambda etcd: admin.move(etcd, args.name, args.host))
    print(
        f"{args.name}: moving to {args.host} (a clean stop, the owner record handed over, "
        "a boot there)"
    )
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("hosts", help="the cluster's hosts (with --cluster URL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=hosts)
    p = sub.add_parser("drain", help="move every guest off a host and place none there")
    p.add_argument("host")
    p.add_argument("--undo", action="store_true", help="let the host take guests again")
    p.set_defaults(func=drain)
    p = sub.add_parser("move", help="move one guest to another host (stop, hand-over, boot)")
    p.add_argument("name")
    p.add_argument("host")
    p.set_defaults(func=move)


def daemon_config(args: argparse.Namespace) -> Any:
    """The ClusterConfig of `warden daemon --cluster ...`, or None."""
    if not args.cluster_urls:
        return None
    from warden.cluster.agent import ClusterConfig
    from warden.cluster.etcd import parse_urls
    from warden.cluster.keys import check_host_name
    from warden.units import parse_size

    parse_urls(args.cluster_urls)
    if not args.host_name:
        raise WardenError("warden daemon --cluster needs --host-name NAME (unique per host)")
    if not 2 <= args.lease_ttl <= 3600:
        raise WardenError(f"--lease-ttl {args.lease_ttl}: expected 2 to 3600 seconds")
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WardenError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return ClusterConfig(
        urls=args.cluster_urls,
        host=check_host_name(args.host_name),
        ttl=args.lease_ttl,
        budget=parse_size(args.budget) if args.budget else 0,
        labels=labels,
    )
