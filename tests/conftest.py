"""Shared fixtures. Every test gets its own WARDEN_HOME; the cache (built images, kernels) is
shared so slow artefacts are built once per machine."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from warden.paths import Layout, layout

if TYPE_CHECKING:
    from tests.support.daemon import DaemonProc


# The caller's terminal and locale must not change what a test sees. TERM reaches guests through
# `ssh -tt` and `warden console`: under tmux (TERM=tmux-256color) Debian's bashrc coloured the
# prompt a honeypot test expects, and with no TERM at all readline leaves bracketed paste off.
# "xterm" is neither *-256color (plain prompt) nor dumb. COLUMNS/LINES, NO_COLOR/FORCE_COLOR and
# CLICOLOR* change rich's and argparse's output; an ssh agent would offer the caller's keys.
STEADY_ENV = {"TERM": "xterm", "LANG": "C.UTF-8"}
CALLER_ONLY = (
    "LC_ALL",
    "LANGUAGE",
    "COLUMNS",
    "LINES",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "CLICOLOR_FORCE",
    "SSH_AUTH_SOCK",
)


@pytest.fixture(autouse=True)
def steady_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in STEADY_ENV.items():
        monkeypatch.setenv(name, value)
    for name in CALLER_ONLY:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Layout]:
    """A fresh WARDEN_HOME. Short on purpose: UNIX socket paths under it (a guest's mconsole)
    must stay below 108 bytes, which pytest's own tmp_path names can exceed."""
    h = Path(tempfile.mkdtemp(prefix="wh-", dir="/tmp"))
    monkeypatch.setenv("WARDEN_HOME", str(h))
    lay = layout(h)
    lay.ensure()
    yield lay
    shutil.rmtree(h, ignore_errors=True)


@pytest.fixture(scope="session")
def minimal_image() -> Iterator[Path]:
    """The minimal image, built into the shared cache (once per machine)."""
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    lay = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    yield minimal.build(ImageStore(lay), NullProgress())


FLEET_HEAD = """
[[owner]]
name = "alice"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWFsaWNlLTAwMDAw alice@t"]

[[owner]]
name = "bob"
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGUta2V5LW5vdC1yZWFsLWJvYi0wMDAwMDAw bob@t"]
"""


def machine_toml(name: str, owner: str = "alice", **keys: object) -> str:
    """A [[machine]] table; values are written as TOML literals."""
    import json

    lines = ["[[machine]]", f'name = "{name}"', f'owner = "{owner}"']
    keys.setdefault("memory", "64M")
    for k, v in keys.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def daemon(home: Layout, minimal_image: Path) -> Iterator["DaemonProc"]:
    """A running daemon for this test's home, with the minimal image installed in it."""
    from tests.support.daemon import DaemonProc
    from warden.images import minimal
    from warden.images.store import ImageStore
    from warden.progress import NullProgress

    minimal.build(ImageStore(home), NullProgress())  # cached: links the image into this home
    d = DaemonProc(home).start()
    try:
        yield d
    finally:
        d.close()
        d.assert_clean()
