"""The minimal image: busybox-static, warden's init, nothing else.

Built without root-only mounts or loop devices: the tree is assembled in a temporary directory
and `mkfs.ext4 -d` turns it into an image. The boot-time behaviour lives in the shell scripts
beside this file (init, rcS, rcK, network, udhcpc.script); docs/formats/seed.md says what the
init reads from the guest's seed disk.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from warden.errors import ImageError
from warden.images.store import ImageStore
from warden.progress import Progress
from warden.units import format_size

BUSYBOX = Path("/bin/busybox")
BUILDER_VERSION = "4"  # bump when the tree layout or the mkfs options below change
# Initialise inode tables and journal now: with lazy init the guest's kernel zeroes them in the
# background after its first mount, writing ~16 MiB into every guest's COW file.
MKFS_OPTIONS = ["-E", "lazy_itable_init=0,lazy_journal_init=0"]
DEFAULT_SIZE = 256 << 20

# name in the package -> (path in the image, mode)
SCRIPTS = {
    "init": ("sbin/init", 0o755),
    "rcS": ("etc/init.d/rcS", 0o755),
    "rcK": ("etc/init.d/rcK", 0o755),
    "network": ("etc/init.d/network", 0o755),
    "udhcpc.script": ("etc/udhcpc.script", 0o755),
}

# Files whose content depends on the guest: links into /run, which init fills from the seed.
RUN_LINKS = {
    "etc/inittab": "/run/warden/inittab",
    "etc/shadow": "/run/warden/shadow",
    "etc/hostname": "/run/warden/hostname",
    "etc/resolv.conf": "/run/warden/resolv.conf",
}

STATIC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    # fpu.env: written by init when the guest must stay off AVX-512 (see init)
    "etc/profile": 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1="\\h:\\w# "\n'
    "[ -r /run/warden/fpu.env ] && . /run/warden/fpu.env\n",
    "etc/issue": "\\n login on \\l\n\n",
    "etc/fstab": "",
}


def _busybox() -> Path:
    if not BUSYBOX.exists():
        raise ImageError(
            f"{BUSYBOX} is missing: the minimal image is made from Debian's busybox-static "
            "(apt-get install busybox-static)"
        )
    out = subprocess.run(["file", "-b", str(BUSYBOX)], capture_output=True, text=True)
    if out.returncode == 0 and "statically linked" not in out.stdout:
        raise ImageError(f"{BUSYBOX} is dynamically linked; install busybox-static")
    return BUSYBOX


def _script(name: str) -> bytes:
    return resources.files("warden.images").joinpath("minimal", name).read_bytes()


def input_key(size: int) -> str:
    h = hashlib.sha256()
    h.update(f"minimal {BUILDER_VERSION} {size} {MKFS_OPTIONS}\n".encode())
    h.update(_busybox().read_bytes())
    for name in sorted(SCRIPTS):
        h.update(name.encode() + b"\0" + _script(name))
    for path, text in sorted({**RUN_LINKS, **STATIC_FILES}.items()):
        h.update(f"{path}\0{text}\0".encode())
    return h.hexdigest()[:12]


def _make_tree(root: Path) -> None:
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "mnt",
        "var/log",
        "home",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    own = {path for path, _ in SCRIPTS.values()}
    for applet in applets:
        if applet in own or applet == "bin/busybox":
            continue
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to("/bin/busybox")
    for name, (path, mode) in SCRIPTS.items():
        target = root / path
        target.write_bytes(_script(name))
        target.chmod(mode)
    for path, text in STATIC_FILES.items():
        (root / path).write_text(text)
    for path, dest in RUN_LINKS.items():
        (root / path).symlink_to(dest)


def build(store: ImageStore, progress: Progress, size: int = DEFAULT_SIZE) -> Path:
    """Build (or take from the cache) the minimal image and make it current; returns its path."""
    key = input_key(size)
    cached = store.cached("minimal", key)
    if cached.exists():
        progress.step(f"minimal image {key} is in the cache")
    else:
        if shutil.which("mkfs.ext4") is None:
            raise ImageError("mkfs.ext4 is missing: apt-get install e2fsprogs")
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="warden-minimal-") as tmp:
            root = Path(tmp) / "root"
            progress.step("assembling the busybox tree")
            _make_tree(root)
            progress.step(f"making a {format_size(size)} ext4 image")
            partial = cached.with_name(f".{cached.name}.partial{os.getpid()}")
            res = subprocess.run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-L",
                    "warden-minimal",
                    *MKFS_OPTIONS,
                    "-d",
                    str(root),
                    str(partial),
                    str(size // 1024) + "k",
                ],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                partial.unlink(missing_ok=True)
                raise ImageError(f"mkfs.ext4 failed: {res.stderr.strip()}")
            # A base image must never change: every COW over it records its mtime.
            partial.chmod(0o444)
            os.replace(partial, cached)
    path = store.install("minimal", key, {"kind": "minimal", "busybox": str(BUSYBOX)})
    progress.step(f"image minimal -> {path}")
    return path
