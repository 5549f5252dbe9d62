"""`warden kernel build|ls`: the kernels warden builds (local: no daemon needed)."""

import argparse
import json

from warden.kernelbuild import build as kbuild
from warden.kernelbuild.source import KNOWN_KERNELS
from warden.paths import layout
from warden.progress import progress
from warden.uml import kernel as ukernel
from warden.units import format_size


def _build(args: argparse.Namespace) -> int:
    lay = layout()
    lay.ensure()
    with progress(f"kernel {args.name}") as p:
        path = kbuild.build(lay, args.name, p)
    print(path)
    return 0


def _ls(args: argparse.Namespace) -> int:
    lay = layout()
    built = kbuild.ls(lay)
    if args.json:
        print(json.dumps([k.as_json() for k in built], indent=1))
        return 0
    print(f"{'NAME':<10} {'SIZE':>7}  {'KEY':<16}  {'VERSION':<10} PATH")
    stock = ukernel.STOCK_KERNEL
    if stock.exists():
        print(f"{'stock':<10} {format_size(stock.stat().st_size):>7}  {'-':<16}  {'':<10} {stock}")
    for k in built:
        print(f"{k.name:<10} {format_size(k.size):>7}  {k.key:<16}  {k.version:<10} {k.path}")
    if not built:
        print(f"(no kernels built in {lay.kernels}; `warden kernel build honeypot` builds one)")
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("kernel", help="build and list UML kernels (the honeypot kernel)")
    ksub = p.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)
    b = ksub.add_parser(
        "build",
        help="build a kernel from Debian's source and warden's patch series (cached)",
        description="Installs the build dependencies if missing (apt), unpacks Debian's "
        "linux-source-6.1, applies kernel/series, configures from Debian's UML configuration "
        "plus kernel/NAME.config, builds with make, caches the result by the hash of all its "
        "inputs and installs it as WARDEN_HOME/kernels/NAME/linux.",
    )
    b.add_argument("name", nargs="?", default="honeypot", choices=KNOWN_KERNELS)
    b.set_defaults(func=_build)
    ls = ksub.add_parser("ls", help="list the kernels built into this home")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)
