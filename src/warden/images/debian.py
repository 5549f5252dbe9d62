"""The Debian image: a real Debian server (bookworm, systemd, sshd) for UML guests.

Built with debootstrap (`--variant=minbase`) from the Debian mirror this host's apt uses.
debian/build.sh does the work in private mount and pid namespaces (`unshare`), on a tmpfs
mounted there: the tree and whatever debootstrap mounts in it (/proc, /sys) vanish with the
namespace, so a build leaves nothing mounted or on disk even when it fails or is killed, and
the only file it writes outside is the partial image, renamed into the cache when complete.
warden's files (beside this module, in debian/) are copied into the tree, debian/customize.sh
runs in it (chroot) to enable and mask units and add the test user `admin`, and
`mkfs.ext4 -d` turns the tree into the image.

At boot the guest's warden-seed.service runs /usr/lib/warden/seed (debian/seed.sh), which reads
the seed disk (docs/formats/seed.md) and writes everything guest-specific under /run/warden.
The image itself holds nothing machine-specific: each guest makes its machine-id and its SSH
host keys at its first boot (warden-ssh-keygen.service) and keeps them in its COW disk.
"""

import collections
import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from warden.errors import ImageError
from warden.images.store import ImageStore
from warden.progress import Progress
from warden.units import format_size

SUITE = "bookworm"
BUILDER_VERSION = "3"  # bump when build() changes what ends up in the image
DEFAULT_SIZE = 2 << 30
MIN_SIZE = 512 << 20  # the tree is about 210 MB; leave guests room to work
NAME = "debian"

# Beyond minbase. A DHCP client: isc-dhcp-client, which ifupdown runs for `inet dhcp`.
PACKAGES = (
    "systemd-sysv",
    "udev",
    "openssh-server",
    "iproute2",
    "ifupdown",
    "isc-dhcp-client",
    "virt-what",
    "procps",
    "less",
    "nano",
    "sudo",
    "dbus",  # with libpam-systemd: logind sessions, hostnamectl, systemctl for non-root users
    "libpam-systemd",
    "libnss-myhostname",  # resolves the guest's own hostname without writing /etc/hosts
    # what a Debian server has and honeypot detectors look for (potsnitch counts a honeypot
    # when two of openssl, strace and lsof are missing); lspci for the persona's PCI bus
    "openssl",
    "strace",
    "lsof",
    "pciutils",
)

# name in the package (debian/) -> (path in the image, mode)
FILES = {
    "seed.sh": ("usr/lib/warden/seed", 0o755),
    "getty.sh": ("usr/lib/warden/getty", 0o755),
    "warden-seed.service": ("etc/systemd/system/warden-seed.service", 0o644),
    "warden-ssh-keygen.service": ("etc/systemd/system/warden-ssh-keygen.service", 0o644),
    "warden-getty@.service": ("etc/systemd/system/warden-getty@.service", 0o644),
    "console-getty.conf": ("etc/systemd/system/console-getty.service.d/warden.conf", 0o644),
    "70-warden-net.rules": ("etc/udev/rules.d/70-warden-net.rules", 0o644),
    "60-warden-legacy-pty.rules": ("etc/udev/rules.d/60-warden-legacy-pty.rules", 0o644),
    "sshd.conf": ("etc/ssh/sshd_config.d/warden.conf", 0o644),
    "system.conf": ("etc/systemd/system.conf.d/warden.conf", 0o644),
    "interfaces": ("etc/network/interfaces", 0o644),
    "hosts": ("etc/hosts", 0o644),
    "fstab": ("etc/fstab", 0o644),
}
# build.sh runs in the namespaces (tmpfs, debootstrap, copy, chroot, mkfs); customize.sh runs
# in the tree (chroot) and is removed from it.
SCRIPTS = ("build.sh", "customize.sh")

SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")

# The namespaces build.sh runs in: its mounts (the tree's tmpfs, debootstrap's /proc and /sys)
# stay private and vanish with it, and killing `unshare` kills every process of the build
# (--kill-child: the forked child is the pid namespace's init). The tree costs about 350 MB
# of memory while the build runs.
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
UNSHARE += ["--mount-proc"]
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _recipe(name: str) -> bytes:
    return resources.files("warden.images").joinpath("debian", name).read_bytes()


# ---------------------------------------------------------------------------------------------
# The mirror: the one this host's apt uses for the suite.


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str], list[str], list[str]]]:
    """(type, uris, suites, components) of each `deb URI SUITE COMPONENT...` line."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) >= 3:
            yield words[0], [words[1]], [words[2]], words[3:]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str], list[str], list[str]]]:
    """The same from a deb822 .sources file (paragraphs of `Field: value` lines)."""
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in para.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for typ in fields.get("types", "").split():
            yield (
                typ,
                fields.get("uris", "").split(),
                fields.get("suites", "").split(),
                fields.get("components", "").split(),
            )


def find_mirror(
    suite: str = SUITE, sources_list: Path = SOURCES_LIST, sources_dir: Path = SOURCES_DIR
) -> str:
    """The first `deb` source of this host's apt that carries `suite` with component main."""
    files: list[Path] = [sources_list] if sources_list.is_file() else []
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        text = path.read_text(errors="replace")
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for typ, uris, suites, components in entries:
            if typ != "deb" or suite not in suites or "main" not in components:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://", "file:/")):
                    return uri.rstrip("/")
    looked = ", ".join(str(p) for p in files) or f"{sources_list} (missing)"
    raise ImageError(
        f"no Debian mirror for {suite!r} (a `deb` source with component main) in {looked}; "
        f"add one to /etc/apt/sources.list, e.g. `deb http://deb.debian.org/debian {suite} "
        "main`, or pass mirror= to the build"
    )


# ---------------------------------------------------------------------------------------------
# Progress: debootstrap's "I: ..." lines become steps. Totals are known from the phase after
# the downloads on (debootstrap lists the packages in TARGET/debootstrap/{required,base} once
# it has them); the downloads advance without one.

_PHASES = [
    (re.compile(r"I: Retrieving (InRelease|Release|Packages)\b"), "fetching the package index"),
    (re.compile(r"I: Resolving dependencies"), "resolving dependencies"),
    (re.compile(r"I: Retrieving \S+ \S+"), "downloading packages"),
    (re.compile(r"I: Extracting "), "extracting the required packages"),
    (re.compile(r"I: Unpacking required packages"), "unpacking the required packages"),
    (re.compile(r"I: Configuring required packages"), "configuring the required packages"),
    (re.compile(r"I: Unpacking the base system"), "unpacking the base system"),
    (re.compile(r"I: Configuring the base system"), "configuring the base system"),
    (re.compile(r"I: Base system installed successfully"), "base system installed"),
    (re.compile(r"warden: (.*)"), ""),  # build.sh's own steps: the text after "warden: "
]
# lines that count one unit of work in the current phase
_UNIT = re.compile(
    r"I: (Validating \S+ \S+|Extracting \S+\.\.\.|(Unpacking|Configuring) \S+\.\.\.)$"
)
# which list of packages (target/debootstrap/NAME) the phase goes through
_PHASE_LIST = {
    "extracting the required packages": "required",
    "unpacking the required packages": "required",
    "configuring the required packages": "required",
    "unpacking the base system": "base",
    "configuring the base system": "base",
}


class DebootstrapProgress:
    """Feeds debootstrap's output, line by line, to a Progress; keeps the last lines."""

    def __init__(self, progress: Progress, target: Path | None = None, keep: int = 40):
        self.progress = progress
        self.target = target
        self.phase = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def _count(self, name: str) -> int:
        """How many packages debootstrap listed in target/debootstrap/NAME (0: unknown)."""
        if self.target is None:
            return 0
        try:
            return len((self.target / "debootstrap" / name).read_text().split())
        except OSError:
            return 0

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.tail.append(line)
        for rx, fixed in _PHASES:
            m = rx.match(line)
            if m:
                phase = fixed or m.group(1)
                if phase != self.phase:
                    self.phase = phase
                    self.progress.step(phase)
                    listed = _PHASE_LIST.get(phase)
                    n = self._count(listed) if listed else 0
                    if n:
                        self.progress.total(n)
                break
        if _UNIT.match(line):
            self.progress.advance(1)


# ---------------------------------------------------------------------------------------------
# The build.


def input_key(size: int, mirror: str) -> str:
    """The cache key: builder version, suite, mirror, packages, recipe files, size."""
    h = hashlib.sha256()
    h.update(f"debian {BUILDER_VERSION} {SUITE} {mirror} {size}\n".encode())
    h.update(("packages " + " ".join(PACKAGES) + "\n").encode())
    for name, (path, mode) in sorted(FILES.items()):
        h.update(f"{name}\0{path}\0{mode:o}\0".encode() + _recipe(name))
    for name in SCRIPTS:
        h.update(name.encode() + b"\0" + _recipe(name))
    return h.hexdigest()[:12]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this process's mount namespace."""
    prefix = str(path.resolve())
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            out.append(point)
    return out


def _remove_stage(path: Path) -> None:
    """Remove a build's staging directory; refuse if anything is mounted in it (the tree's
    tmpfs belongs to the build's own mount namespace and is never seen here)."""
    if not path.exists():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise ImageError(
            f"build directory {path} has mounts ({', '.join(mounted)}); unmount them "
            "(umount -R) and remove the directory by hand"
        )
    shutil.rmtree(path)


def _remove_stale(cache_dir: Path) -> None:
    """Staging directories and partial images of builds that were killed (pid gone)."""
    for stage in cache_dir.glob(".debian-build-*"):
        m = re.match(r"\.debian-build-(\d+)-", stage.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _remove_stage(stage)
    for partial in cache_dir.glob(".debian-*.img.partial*"):
        m = re.search(r"\.partial(\d+)$", partial.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            partial.unlink(missing_ok=True)


def _check_size(size: int) -> None:
    if size < MIN_SIZE or size % 1024:
        raise ImageError(
            f"size {size} bytes ({format_size(size)}) will not do for the Debian image; give a "
            f"whole number of KiB, at least {format_size(MIN_SIZE)} "
            f"(default {format_size(DEFAULT_SIZE)})"
        )


def _check_host() -> None:
    if os.geteuid() != 0:
        raise ImageError("building the Debian image needs root (debootstrap, chroot, unshare)")
    for tool, package in (
        ("debootstrap", "debootstrap"),
        ("unshare", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
    ):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise ImageError(f"{tool} is missing: apt-get install {package}")


def _stage(stage: Path) -> None:
    """Lay out warden's files (as they go into the image) and the build scripts."""
    files = stage / "files"
    for name, (path, mode) in FILES.items():
        target = files / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_recipe(name))
        target.chmod(mode)
    for name in SCRIPTS:
        (stage / name).write_bytes(_recipe(name))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if warden dies (then --kill-child ends the rest)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_build(stage: Path, partial: Path, size: int, mirror: str, progress: Progress) -> None:
    env = dict(os.environ)
    env.update(
        PATH="/usr/sbin:/usr/bin:/sbin:/bin",
        LC_ALL="C",
        DEBIAN_FRONTEND="noninteractive",
        WARDEN_STAGE=str(stage),
        WARDEN_SUITE=SUITE,
        WARDEN_MIRROR=mirror,
        WARDEN_PACKAGES=",".join(PACKAGES),
        WARDEN_IMAGE=str(partial),
        WARDEN_SIZE_K=str(size // 1024),
        WARDEN_SIZE=format_size(size),
    )
    feed = DebootstrapProgress(progress)
    with subprocess.Popen(
        [*UNSHARE, "/bin/sh", str(stage / "build.sh")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        preexec_fn=_die_with_parent,
    ) as proc:
        # the tree's tmpfs is seen only in the build's mount namespace, and through its /proc
        feed.target = Path(f"/proc/{proc.pid}/root") / stage.relative_to("/") / "tree"
        try:
            for line in proc.stdout or ():
                feed.feed(line)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()  # --kill-child takes the namespace's processes with it
    if rc != 0:
        hint = ""
        if feed.phase.startswith("making"):
            hint = "\n(if the file system ran out of space, give a larger --size)"
        tail = "\n".join(feed.tail)
        raise ImageError(
            f"building the Debian image from {mirror} failed while {feed.phase or 'starting'} "
            f"(exit {rc}); the last lines:\n{tail}{hint}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One Debian build at a time on this machine (a second waits, then may find the cache)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build(
    store: ImageStore,
    progress: Progress,
    size: int = DEFAULT_SIZE,
    mirror: str | None = None,
) -> Path:
    """Build (or take from the cache) the Debian image and make it current; returns its path."""
    _check_size(size)  # before anything slow or privileged
    mirror = (mirror or find_mirror()).rstrip("/")
    key = input_key(size, mirror)
    cached = store.cached(NAME, key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cached.with_name(f".{NAME}.lock")):
        if cached.exists():
            progress.step(f"debian image {key} is in the cache")
        else:
            _check_host()
            _remove_stale(cached.parent)
            stage = Path(
                tempfile.mkdtemp(prefix=f".debian-build-{os.getpid()}-", dir=cached.parent)
            )
            partial = cached.with_name(f".{cached.name}.partial{os.getpid()}")
            try:
                _stage(stage)
                progress.step(f"debootstrap {SUITE} from {mirror}")
                _run_build(stage, partial, size, mirror, progress)
                partial.chmod(0o444)  # a base image never changes: COW headers record its mtime
                os.replace(partial, cached)
            finally:
                partial.unlink(missing_ok=True)
                _remove_stage(stage)
    path = store.install(
        NAME,
        key,
        {"kind": "debian", "suite": SUITE, "mirror": mirror, "packages": " ".join(PACKAGES)},
    )
    progress.step(f"image debian -> {path}")
    return path
