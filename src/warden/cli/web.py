"""`warden web link`: a one-time login link to the web console (warden.web).

    warden web link OWNER [--ttl 15m]     for one owner of the fleet (her guests; all of them
                                          for an owner with admin = true)
    warden web link --admin [--ttl 15m]   for an administrator: the caller, root on the host

The URL goes to stdout alone (`xdg-open "$(warden web link alice)"`), what it is for to
stderr. The token is in the URL's fragment, which browsers never send to a server or put in a
Referer: the login page hands it over once and the link is spent.
"""

import argparse
import json
import sys
import time

from warden import termsafe
from warden.api.client import ApiClient
from warden.errors import WardenError
from warden.paths import layout


def _link(args: argparse.Namespace) -> int:
    try:
        ttl = _ttl(args.ttl)
    except ValueError as e:
        raise WardenError(f"--ttl {args.ttl!r}: {e}") from None
    out = ApiClient(layout()).post(
        "/web/link", {"owner": args.owner, "admin": args.admin, "ttl": ttl}
    )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(out["url"], flush=True)
    until = time.strftime("%H:%M:%S", time.localtime(out["expires"]))
    print(
        f"warden: for {termsafe.line(out['user'])}; one use, until {until}",
        file=sys.stderr,
    )
    if out.get("fingerprint"):
        print(
            f"warden: certificate SHA-256 {out['fingerprint']}\n"
            "        (when it is warden's own, the browser asks once whether to trust it: "
            "compare this)",
            file=sys.stderr,
        )
    return 0


def _ttl(text: str) -> int:
    from warden.spec.recycle import parse_duration

    seconds = int(text) if text.isdigit() else parse_duration(text)
    if not 0 < seconds <= 86400:
        raise ValueError("expected more than 0 and at most 1d")
    return seconds


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("web", help="the web console: one-time login links")
    wsub = p.add_subparsers(dest="web_command", metavar="ACTION", required=True)
    q = wsub.add_parser(
        "link",
        help="print a one-time login URL for OWNER (or, with --admin alone, for an administrator)",
    )
    q.add_argument("owner", nargs="?", help="an [[owner]] of the fleet")
    q.add_argument(
        "--admin",
        action="store_true",
        help="an administrator's link: every guest (OWNER, if given, must have admin = true)",
    )
    q.add_argument("--ttl", default="15m", help="how long the link stays valid: 90s, 15m, 1h")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_link)


__all__ = ["register"]
