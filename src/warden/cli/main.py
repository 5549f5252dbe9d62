"""The `warden` command: a thin front end over the daemon's API and the local libraries.

Each command group lives in its own module under warden.cli and exposes
`register(sub: argparse._SubParsersAction) -> None`, which adds its parsers and sets
`func=handler` on each; a handler takes the parsed namespace and returns the exit status.
WardenError messages are printed without a traceback and exit with status 2.
"""

import argparse
import importlib
import sys

from warden import termsafe
from warden.errors import WardenError

# Command groups, in the order `warden --help` lists them.
COMMAND_MODULES = (
    "warden.cli.machines",
    "warden.cli.fleet",
    "warden.cli.images",
    "warden.cli.disk",
    "warden.cli.kernel",
    "warden.cli.jail",
    "warden.cli.logs",
    "warden.cli.mem",
    "warden.cli.net",
    "warden.cli.forensics",
    "warden.cli.honeypot",
    "warden.cli.web",
    "warden.cli.cluster",
)


# The offline commands: they work on files, with no daemon (as borg's local commands do).
# Every other command goes through the daemon's API (warden.api.client); tests/test_layers.py
# holds the CLI's modules to it.
OFFLINE = (
    "disk ... --cow FILE",  # COW files (by machine name: through the API)
    "logs verify|export|replay|search|dump|ls",  # session logs on disk (logs flush: the API)
    "replay",
    "image build|ls",
    "kernel build|ls",
    "fleet add-key",
    "mem plot",  # the balancer's log file
    "timeline",  # with no daemon: the files as they are (a running guest's disk is not read)
    "evidence verify|unpack",
    "doctor",  # what the host offers
)


# Which module registers each top-level command, so that `warden ls` imports the machines
# module only (the CLI starts in ~0.1 s instead of loading every feature's libraries).
# tests/cli/test_cli.py checks this table against what the modules really register.
COMMANDS = {
    **dict.fromkeys(
        (
            "up",
            "daemon",
            "apply",
            "ls",
            "create",
            "start",
            "stop",
            "kill",
            "reset",
            "destroy",
            "pause",
            "resume",
            "console",
            "mconsole",
            "events",
            "status",
            "doctor",
        ),
        "warden.cli.machines",
    ),
    "fleet": "warden.cli.fleet",
    "image": "warden.cli.images",
    "disk": "warden.cli.disk",
    "kernel": "warden.cli.kernel",
    "jail": "warden.cli.jail",
    "logs": "warden.cli.logs",
    "replay": "warden.cli.logs",
    "mem": "warden.cli.mem",
    "top": "warden.cli.mem",
    "net": "warden.cli.net",
    "timeline": "warden.cli.forensics",
    "evidence": "warden.cli.forensics",
    "recycle": "warden.cli.forensics",
    "honeypot": "warden.cli.honeypot",
    "web": "warden.cli.web",
    "pools": "warden.cli.forensics",
    "hosts": "warden.cli.cluster",
    "drain": "warden.cli.cluster",
    "move": "warden.cli.cluster",
}

# With --cluster URL these commands go to etcd (warden.cli.cluster), not to a daemon.
CLUSTER_COMMANDS = ("apply", "ls")


def _command_word(argv: list[str]) -> str | None:
    """The first word of argv that is not an option (or --home's value)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--home", "--cluster"):
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warden",
        description="Fleets of User Mode Linux guests for server consolidation and honeypots.",
    )
    parser.add_argument("--home", help="state directory (default: $WARDEN_HOME or /var/lib/warden)")
    parser.add_argument(
        "--cluster",
        metavar="URL[,URL...]",
        help="talk to the cluster whose etcd members these are (apply, ls, hosts, drain, move)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = COMMANDS.get(_command_word(sys.argv[1:] if argv is None else argv) or "")
    for name in COMMAND_MODULES:
        if wanted is not None and name != wanted:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.home:
        import os

        os.environ["WARDEN_HOME"] = args.home
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.cluster and args.command in CLUSTER_COMMANDS:
        from warden.cli import cluster

        args.func = getattr(cluster, args.command)
    try:
        code: int = args.func(args)
        return code
    except WardenError as e:
        print(f"warden: {termsafe.text(e)}", file=sys.stderr)  # errors may quote a guest
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
