"""`warden honeypot score NAME [--json]`: how detectable a guest is (through the daemon's API).

The daemon runs the battery (warden.honeypot.score) on the guest's console and answers with
every check's verdict; this prints them, tells first. The exit status is 0 when no tell is found
that warden could hide, 1 otherwise (3 when the battery did not finish).
"""

import argparse
import json
from typing import Any

from warden import termsafe
from warden.api.client import ApiClient
from warden.paths import layout

MARK = {"tell": "TELL", "pass": "ok", "n/a": "n/a", "error": "ERROR"}
ORDER = {"tell": 0, "error": 1, "n/a": 2, "pass": 3}


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    head = (
        f"{report['machine']}: {s['checks']} checks, {s['passed']} passed, {s['tells']} tells "
        f"({s['hideable_tells']} hideable), {s['not_applicable']} n/a, {s['errors']} errors"
        f"  [kernel {report.get('kernel')}, disguise {report.get('disguise')}, "
        f"unprivileged user {report.get('user') or '-'}]"
    )
    lines = [termsafe.line(head)]
    checks = sorted(report["checks"], key=lambda c: (ORDER.get(c["verdict"], 9), c["id"]))
    for c in checks:
        note = ""
        if not c["hideable"]:
            done = not c.get("why_not_hideable", "").startswith("not done")
            note = "  (cannot be hidden)" if done else "  (not hidden yet)"
        lines.append(termsafe.line(f"{MARK.get(c['verdict'], '?'):<5} {c['id']:<22} "
                                   f"{c['identity']:<4} {c['title']}{note}"))  # fmt: skip
        if c["verdict"] != "pass":
            for e in c["evidence"]:
                lines.append("        " + termsafe.line(e))
    if not report.get("complete", True):
        lines.append("(the battery did not finish within the timeout: some probes are missing)")
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    body = {"timeout": args.timeout, "force": args.force, "answers": args.answers}
    if args.line:
        body["line"] = args.line
    client = ApiClient(layout(), timeout=args.timeout + 60)
    report = client.post(f"/honeypot/{args.name}/score", body)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(render(report))
    if not report.get("complete", True):
        return 3
    return 1 if report["summary"]["hideable_tells"] else 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("honeypot", help="honeypot guests: how detectable they are")
    hsub = p.add_subparsers(dest="honeypot_command", metavar="ACTION", required=True)
    s = hsub.add_parser(
        "score",
        help="run public and UML-specific detection checks inside a guest",
        description="Types a battery of checks (virt-what, systemd-detect-virt, /proc, the "
        "kernel log, sysfs and /dev names, DMI, PCI, ACPI, the NIC's MAC, CPUID, public "
        "honeypot detectors' signatures, system-call timing) on the guest's console, as root "
        "and as an unprivileged user, and reports every tell with its evidence. The console "
        "must be at a root shell; the commands are recorded in the guest's logs like any "
        "console input.",
    )
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="the whole report as JSON")
    s.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180)")
    s.add_argument("--line", default="", help="the line to run on (default: the first)")
    s.add_argument("--force", action="store_true", help="take the line from its writer")
    s.add_argument(
        "--answers", action="store_true", help="with --json: also every probe's raw answer"
    )
    s.set_defaults(func=_score)
