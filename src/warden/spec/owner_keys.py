"""Adding an SSH public key to the owners of a fleet file, keeping the file as it was written.

`make up` runs the example fleet, whose owners hold placeholder keys; `warden fleet add-key`
writes a copy of it where the owners also accept the reader's own key, so that the README's
`ssh -p 2222 alice@127.0.0.1` works for the person who reads it. The tracked file is never
changed.

The edit is made on the text (comments, order and layout stay as the author wrote them), and
checked with tomllib: the copy must parse to exactly the original document with the key added
to the chosen owners. A layout the edit does not handle is refused by that check with a
message, never written half right.
"""

import json
import os
import pwd
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from warden.errors import SpecError

# OpenSSH's default identities, in the order `ssh` offers them (id_dsa is refused by the
# concentrator, as by OpenSSH today).
DEFAULT_IDENTITIES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")

_HEADER = re.compile(r"\[")  # a table header starts a line (TOML writes nothing else there)
_OWNER = re.compile(r"\[\[\s*owner\s*\]\]\s*(#.*)?$")
_KEYS = re.compile(r"\s*keys\s*=\s*\[")


def add_key(text: str, key: str, owners: Iterable[str] | None = None, source: str = "") -> str:
    """`text` with `key` first in the keys of `owners` (every owner when None). Owners that
    already have the key are left as they are. SpecError when an owner does not exist or the
    file's layout defeats the edit."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from None
    tables: list[dict[str, Any]] = doc.get("owner", [])
    names = [str(t.get("name", "")) for t in tables]
    wanted = list(names if owners is None else owners)
    for name in wanted:
        if name not in names:
            raise SpecError(
                f"{source}: no owner named {name!r}; the file's owners: {', '.join(names)}"
            )
    todo = [
        i for i, t in enumerate(tables) if t.get("name") in wanted and key not in t.get("keys", [])
    ]
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _OWNER.match(line)]
    if len(starts) != len(tables):
        raise _cannot(source, "its [[owner]] tables are not each on a line of their own")
    for n in reversed(todo):  # from the end: earlier line numbers stay valid
        start = starts[n]
        end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
        at = next((i for i in range(start + 1, end) if _KEYS.match(lines[i])), None)
        quoted = json.dumps(key)  # a JSON string is a TOML basic string
        if at is None:
            lines.insert(start + 1, f"keys = [{quoted}]\n")
        else:
            line = lines[at]
            cut = _KEYS.match(line)
            assert cut is not None
            head, rest = line[: cut.end()], line[cut.end() :]
            sep = "" if rest.lstrip().startswith("]") else ", "
            lines[at] = f"{head}{quoted}{sep}{rest}"
    out = "".join(lines)
    expected = tomllib.loads(text)
    for n in todo:
        expected["owner"][n]["keys"] = [key, *tables[n].get("keys", [])]
    try:
        got: dict[str, Any] | None = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        got = None
    if got != expected:
        raise _cannot(source, "the key could not be placed in its owners' keys arrays")
    return out


def _cannot(source: str, why: str) -> SpecError:
    return SpecError(
        f"{source}: cannot add a key to this file's owners automatically ({why}); add it to "
        "each [[owner]]'s keys by hand"
    )


def invoking_user_home() -> Path:
    """The home of the user who ran `sudo make up` (SUDO_USER), else this user's (root's)."""
    user = os.environ.get("SUDO_USER", "")
    if user and user != "root":
        try:
            return Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            pass
    return Path.home()


def find_public_key(home: Path) -> Path | None:
    """The first of OpenSSH's default public keys under HOME/.ssh, or None."""
    for name in DEFAULT_IDENTITIES:
        path = home / ".ssh" / name
        if path.is_file():
            return path
    return None


def read_public_key(path: Path) -> str:
    """The one key of an OpenSSH .pub file; SpecError naming the file if it holds none."""
    try:
        raw = path.read_text(errors="replace")
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if len(raw) > 16384 or len(lines) != 1 or len(lines[0].split()) < 2:
        raise SpecError(
            f"{path}: expected one OpenSSH public key line such as "
            '"ssh-ed25519 AAAA... user@host" (a .pub file)'
        )
    return lines[0]
