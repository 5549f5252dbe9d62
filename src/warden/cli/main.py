"""The `warden` command: a thin front end over the daemon's API and the local libraries.

Each command group lives in its own module under warden.cli and exposes
`register(sub: argparse._SubParsersAction) -> None`, which adds its parsers and sets
`func=handler` on each; a handler takes the parsed namespace and returns the exit status.
WardenError messages are printed without a traceback and exit with status 2.
"""

import argparse
import importlib
import sys

from warden.errors import WardenError

# Command groups, in the order `warden --help` lists them.
COMMAND_MODULES = (
    "warden.cli.machines",
    "warden.cli.images",
    "warden.cli.disk",
    "warden.cli.kernel",
    "warden.cli.jail",
    "warden.cli.logs",
    "warden.cli.mem",
    "warden.cli.net",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warden",
        description="Fleets of User Mode Linux guests for server consolidation and honeypots.",
    )
    parser.add_argument("--home", help="state directory (default: $WARDEN_HOME or /var/lib/warden)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.home:
        import os

        os.environ["WARDEN_HOME"] = args.home
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except WardenError as e:
        print(f"warden: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
