"""`warden fleet add-key`: a copy of a fleet file whose owners accept your SSH key.

Local only (no daemon): `make up` runs it on the example fleet, so that its owners accept the
key of whoever ran `make up`, and then runs the copy.
"""

import argparse
import os
import sys
from pathlib import Path

from warden.paths import layout
from warden.spec import fleet, owner_keys


def _add_key(args: argparse.Namespace) -> int:
    src = Path(args.fleet)
    spec = fleet.load(src)  # a broken file is refused with its own message, before any copy
    text = src.read_text()
    out = Path(args.out) if args.out else layout().home / "fleets" / src.name
    if args.key:
        key_file: Path | None = Path(args.key)
    else:
        home = owner_keys.invoking_user_home()
        key_file = owner_keys.find_public_key(home)
        if key_file is None:
            print(
                f"warden: no public key in {home}/.ssh ({', '.join(owner_keys.DEFAULT_IDENTITIES)})"
                f": {src}'s owners keep the keys it lists. To log in as them, make a key with "
                "`ssh-keygen -t ed25519` and run this again (make up does).",
                file=sys.stderr,
            )
    copy = text
    if key_file is not None:
        key = owner_keys.read_public_key(key_file)
        copy = owner_keys.add_key(text, key, args.owner or None, str(src))
        fleet.parse(copy, str(out))  # the key itself is checked like any key of a fleet file
        names = args.owner or [o.name for o in spec.owners]
        print(f"warden: {', '.join(names)} may log in with {key_file}", file=sys.stderr)
        copy = (
            f"# Made by `warden fleet add-key` from {src.absolute()}, with the key of "
            f"{key_file} added to its owners. Edit that file, not this one.\n" + copy
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(copy)
    os.replace(tmp, out)
    print(out)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("fleet", help="fleet files: give their owners your SSH key")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    add = fsub.add_parser(
        "add-key",
        help="copy a fleet file, adding your SSH public key to its owners (prints the copy's path)",
    )
    add.add_argument("fleet", help="the fleet file (not changed)")
    add.add_argument(
        "--key",
        help="an OpenSSH .pub file (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub "
        "of the user who ran sudo, else of this user)",
    )
    add.add_argument(
        "--owner", action="append", help="only this owner (repeat for several; default: all)"
    )
    add.add_argument("--out", help="where to write the copy (default: WARDEN_HOME/fleets/NAME)")
    add.set_defaults(func=_add_key)
