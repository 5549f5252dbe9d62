"""`warden image build|ls`: guest root images (local: no daemon needed)."""

import argparse
import importlib
import json

from warden.errors import WardenError
from warden.images.store import ImageStore
from warden.paths import layout
from warden.progress import progress
from warden.units import format_size, parse_size


def _build(args: argparse.Namespace) -> int:
    lay = layout()
    lay.ensure()
    store = ImageStore(lay)
    with progress(f"image {args.kind}") as p:
        if args.kind == "minimal":
            from warden.images import minimal

            minimal.build(
                store, p, size=parse_size(args.size) if args.size else minimal.DEFAULT_SIZE
            )
        elif args.kind == "debian":
            try:
                debian = importlib.import_module("warden.images.debian")
            except ModuleNotFoundError:
                raise WardenError("the debian image recipe is not available yet") from None
            debian.build(store, p, size=parse_size(args.size) if args.size else debian.DEFAULT_SIZE)
    return 0


def _ls(args: argparse.Namespace) -> int:
    images = ImageStore(layout()).ls()
    if args.json:
        print(json.dumps([i.as_json() for i in images], indent=1))
        return 0
    if not images:
        print("no images; build one with `warden image build minimal`")
        return 0
    print(f"{'NAME':<12} {'SIZE':>7} {'ON DISK':>8}  KEY           PATH")
    for i in images:
        print(
            f"{i.name:<12} {format_size(i.size):>7} {format_size(i.disk):>8}  {i.key:<12}  {i.path}"
        )
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("image", help="build and list guest root images")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build an image (cached by its inputs)")
    b.add_argument("kind", choices=["minimal", "debian"])
    b.add_argument("--size", help="filesystem size, e.g. 256M (default per kind)")
    b.set_defaults(func=_build)
    ls = isub.add_parser("ls", help="list built images")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)
