"""Writes a guest's seed disk (docs/formats/seed.md).

The seed holds password hashes and authorized keys: it is root's, mode 0400, whenever warden
has written or checked it; a jailed guest's launcher hands it to the guest's uid (still 0400)
just before binding it into the jail (warden.host.jail, Bind.give).
"""

import hashlib
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from warden.errors import ImageError

SEED_SIZE_K = 1024
SEED_FORMAT = 2  # 2: no filesystem label (a guest's blkid showed "warden-seed")
SEED_MODE = 0o400


@dataclass(frozen=True)
class Seed:
    hostname: str
    lines: tuple[str, ...] = ("tty0",)
    root_hash: str = ""
    network: dict[str, str] = field(default_factory=dict)  # WARDEN_IP, WARDEN_GATEWAY, ...
    admin_hash: str = ""  # WARDEN_ADMIN_HASH: crypt(3) hash for the user admin ("": none)
    ssh_keys: tuple[str, ...] = ()  # WARDEN_SSH_KEYS: authorized keys of root and admin
    # WARDEN_FPU_SAFE=1: the guest's kernel loses AVX-512 state across signals; its image then
    # keeps glibc and OpenSSL off AVX-512 (warden.uml.xstate decides)
    fpu_safe: bool = False


def _check(seed: Seed) -> None:
    """ImageError for values that would corrupt the guest's files (one line each, no ':')."""
    if any(c in seed.admin_hash for c in ":\n\r\0"):
        raise ImageError(
            "seed: admin_hash must be one crypt(3) hash (e.g. from `openssl passwd -6`), "
            "without ':' or line breaks"
        )
    for i, key in enumerate(seed.ssh_keys):
        if not key.strip() or any(c in key for c in "\n\r\0"):
            raise ImageError(
                f"seed: ssh_keys[{i}] must be one authorized_keys line (e.g. the contents of "
                f"id_ed25519.pub), not empty and without line breaks; got {key[:40]!r}"
            )


def _env(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def write(path: Path, seed: Seed) -> None:
    """Atomically (re)write the seed disk at `path`, unless it already holds `seed`."""
    stamp = path.with_name(path.name + ".sha256")
    digest = hashlib.sha256(f"{SEED_FORMAT} {seed!r}".encode()).hexdigest()
    if path.exists() and stamp.exists() and stamp.read_text() == digest:
        # unchanged since the last boot: skip mkfs, but take it back from the last jailed boot
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, SEED_MODE)
        return
    stamp.unlink(missing_ok=True)
    _write(path, seed)
    fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(digest)


def _write(path: Path, seed: Seed) -> None:
    _check(seed)
    with tempfile.TemporaryDirectory(prefix="warden-seed-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        values = {
            "WARDEN_HOSTNAME": seed.hostname,
            "WARDEN_LINES": " ".join(seed.lines),
            "WARDEN_ROOT_HASH": seed.root_hash,
        }
        # optional: written only when set, so seeds without them stay as they were
        if seed.admin_hash:
            values["WARDEN_ADMIN_HASH"] = seed.admin_hash
        if seed.ssh_keys:
            values["WARDEN_SSH_KEYS"] = "\n".join(k.strip() for k in seed.ssh_keys)
        if seed.fpu_safe:
            values["WARDEN_FPU_SAFE"] = "1"
        (root / "seed.env").write_text(_env(values))
        if seed.network:
            (root / "network.env").write_text(_env(seed.network))
        partial = path.with_name(f".{path.name}.partial{os.getpid()}")
        partial.unlink(missing_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        res = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-O",
                "^has_journal",
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
        os.chmod(partial, SEED_MODE)
        os.replace(partial, path)
