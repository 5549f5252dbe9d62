"""Writes a guest's seed disk (docs/formats/seed.md)."""

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from warden.errors import ImageError

SEED_SIZE_K = 1024


@dataclass(frozen=True)
class Seed:
    hostname: str
    lines: tuple[str, ...] = ("tty0",)
    root_hash: str = ""
    network: dict[str, str] = field(default_factory=dict)  # WARDEN_IP, WARDEN_GATEWAY, ...


def _env(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def write(path: Path, seed: Seed) -> None:
    """Atomically (re)write the seed disk at `path`."""
    with tempfile.TemporaryDirectory(prefix="warden-seed-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        (root / "seed.env").write_text(
            _env(
                {
                    "WARDEN_HOSTNAME": seed.hostname,
                    "WARDEN_LINES": " ".join(seed.lines),
                    "WARDEN_ROOT_HASH": seed.root_hash,
                }
            )
        )
        if seed.network:
            (root / "network.env").write_text(_env(seed.network))
        partial = path.with_name(f".{path.name}.partial{os.getpid()}")
        res = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-L",
                "warden-seed",
                "-d",
                str(root),
                str(partial),
                f"{SEED_SIZE_K}k",
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ImageError(f"writing the seed disk {path} failed: {res.stderr.strip()}")
        os.replace(partial, path)
