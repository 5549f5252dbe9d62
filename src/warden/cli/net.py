"""`warden net ls|cut|restore|capture`: guest networking (thin: the daemon does the work)."""

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO
from urllib.parse import urlencode

from warden import termsafe
from warden.api.client import ApiClient
from warden.errors import WardenError
from warden.net.capture import RecordBoundary
from warden.paths import layout
from warden.units import format_size


def _client() -> ApiClient:
    return ApiClient(layout())


def _ls(args: argparse.Namespace) -> int:
    info: dict[str, Any] = _client().get("/net")
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    q = termsafe.line  # DHCP leases and errors can carry what a guest sent
    where = q(info["netns"] or "(host)")
    print(f"network namespace: {where}" + (" (made by warden)" if info["netns_created"] else ""))
    if info.get("error"):
        print(f"last error: {q(info['error'])}")
    if info.get("br_netfilter") is False:
        print("warning: no br_netfilter here: egress rules do not see guest-to-guest traffic")
    if not info["networks"]:
        print("no networks; add [[network]] tables to the fleet file")
    else:
        print(f"{'NETWORK':<12} {'SUBNET':<18} {'GATEWAY':<15} {'NAT':<4} {'BRIDGE':<15} DNSMASQ")
        for n in info["networks"]:
            state = q(n["bridge"]) if n["up"] else f"{q(n['bridge'])} (down)"
            print(
                f"{q(n['name']):<12} {q(n['subnet']):<18} {q(n['gateway']):<15} "
                f"{'yes' if n['nat'] else 'no':<4} {state:<15} {q(n['dnsmasq'] or '-')}"
            )
    if info["guests"]:
        print()
        print(
            f"{'GUEST':<16} {'NIC':<5} {'ADDRESS':<15} {'TAP':<15} {'EGRESS':<12} "
            f"{'RX':>8} {'TX':>8}  NOTE"
        )
        for g in info["guests"]:
            notes = []
            if g["cut"]:
                notes.append("CUT")
            if g["capture"]:
                notes.append("captured")
            if g["forwards"]:
                notes.append("forwards " + " ".join(q(f) for f in g["forwards"]))
            for nic in g["nics"]:
                rx = format_size(nic["rx_bytes"]) if nic["rx_bytes"] is not None else "-"
                tx = format_size(nic["tx_bytes"]) if nic["tx_bytes"] is not None else "-"
                addr = q(nic["ip"]) + ("*" if nic["dhcp"] else "")
                print(
                    f"{q(g['name']):<16} eth{nic['nic']:<2} {addr:<15} {q(nic['tap'] or '-'):<15} "
                    f"{q(g['egress']):<12} {rx:>8} {tx:>8}  {' '.join(notes)}"
                )
        print("(* handed out by DHCP)")
    return 0


def _cut(args: argparse.Namespace) -> int:
    out = _client().post(f"/net/{args.name}/cut")
    state = "cut" if out["running"] else "cut (applies from its next boot)"
    print(f"{args.name}: {state}" + ("" if out["changed"] else " (already)"))
    return 0


def _restore(args: argparse.Namespace) -> int:
    out = _client().post(f"/net/{args.name}/restore")
    print(f"{args.name}: restored" + ("" if out["changed"] else " (was not cut)"))
    return 0


def _capture(args: argparse.Namespace) -> int:
    if not args.out and sys.stdout.isatty():
        raise WardenError("the capture is pcap: give --out FILE.pcap, or pipe it (| tcpdump -r -)")
    query: dict[str, Any] = {"nic": args.nic}
    if args.count:
        query["count"] = args.count
    if args.duration:
        query["duration"] = args.duration
    resp = _client().stream(f"/net/{args.name}/capture?{urlencode(query)}")
    tap = termsafe.line(resp.header("X-Warden-Tap", "?"))
    out: BinaryIO
    path = Path(args.out) if args.out else None
    out = open(path, "wb") if path else sys.stdout.buffer  # noqa: SIM115
    print(
        f"warden: capturing {args.name} eth{args.nic} ({tap}) to {path or 'stdout'}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    boundary = RecordBoundary()  # to cut a packet interrupted by Ctrl-C off the file

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Both, explicitly: a capture started in the background by a script (`… & kill -INT $!`)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt for it.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    packets_note = ""
    try:
        while True:
            chunk = resp.read(65536)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            boundary.feed(chunk)
    except KeyboardInterrupt:
        packets_note = " (interrupted)"
    finally:
        resp.close()
        if path:
            out.truncate(boundary.complete)
            out.close()
    print(f"warden: capture of {args.name} ended{packets_note}", file=sys.stderr)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("net", help="guest networks: list, cut, restore, capture")
    nsub = p.add_subparsers(dest="net_command", metavar="ACTION", required=True)
    ls = nsub.add_parser("ls", help="networks and guests' NICs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)
    cut = nsub.add_parser("cut", help="drop everything to and from a guest, at once")
    cut.add_argument("name")
    cut.set_defaults(func=_cut)
    restore = nsub.add_parser("restore", help="undo `warden net cut`")
    restore.add_argument("name")
    restore.set_defaults(func=_restore)
    cap = nsub.add_parser(
        "capture", help="record every frame of a guest's NIC (pcap, host side of its tap)"
    )
    cap.add_argument("name")
    cap.add_argument("--out", "-o", help="pcap file to write (default: stdout)")
    cap.add_argument("--nic", type=int, default=0, help="which NIC (default 0, eth0)")
    cap.add_argument("--count", "-c", type=int, help="stop after this many packets")
    cap.add_argument("--duration", type=float, help="stop after this many seconds")
    cap.set_defaults(func=_capture)
