"""The inputs of a kernel build: Debian's source, warden's patch series and configuration.

A build is named by the hash of everything that changes its result (`BuildInputs.key`): the
source tarball, the base configuration (`linux.uml --showconfig` of Debian's kernel), the
patches in series order, the configuration fragment, the version string the build stamps in,
the compiler and this builder's version. docs/decisions/2026-11-29-honeypot-kernel.md.
"""

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import warden
from warden.errors import KernelError
from warden.uml.kernel import STOCK_KERNEL

BUILDER_VERSION = "1"  # bump when the build steps change what they produce
SOURCE_TARBALL = Path(os.environ.get("WARDEN_KERNEL_SOURCE", "/usr/src/linux-source-6.1.tar.xz"))
SOURCE_PACKAGE = "linux-source-6.1"
KNOWN_KERNELS = ("honeypot",)  # the patch series warden carries, by kernel name


def series_dir() -> Path:
    """The top-level kernel/ directory of warden's source tree (or $WARDEN_KERNEL_PATCHES)."""
    env = os.environ.get("WARDEN_KERNEL_PATCHES")
    here = Path(env) if env else Path(warden.__file__).resolve().parents[2] / "kernel"
    if not (here / "series").is_file():
        raise KernelError(
            f"the honeypot kernel's patch series is not at {here} (no 'series' file there); "
            "run warden from its source tree or set WARDEN_KERNEL_PATCHES to the kernel/ "
            "directory"
        )
    return here


@dataclass(frozen=True)
class Patch:
    name: str
    text: bytes

    def files(self) -> list[str]:
        """Paths the patch creates or changes, relative to the source tree."""
        out = []
        for m in re.finditer(rb"^\+\+\+ b/(\S+)", self.text, re.M):
            out.append(m.group(1).decode())
        return out


def read_series(directory: Path) -> list[Patch]:
    series = directory / "series"
    patches = []
    for n, raw in enumerate(series.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        path = directory / line
        if "/" in line or not path.is_file():
            raise KernelError(
                f"{series}:{n}: {line!r} is not a patch file in {directory} "
                "(one file name per line, applied in order)"
            )
        patches.append(Patch(line, path.read_bytes()))
    if not patches:
        raise KernelError(f"{series} names no patches")
    return patches


@dataclass(frozen=True)
class ConfigLine:
    option: str  # CONFIG_X
    value: str  # "y", "m", '"text"', ... or "n" for "# CONFIG_X is not set"

    def holds_in(self, config: dict[str, str]) -> bool:
        return config.get(self.option, "n") == self.value

    def __str__(self) -> str:
        if self.value == "n":
            return f"# {self.option} is not set"
        return f"{self.option}={self.value}"


_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """A .config as {option: value}; options not set are absent."""
    out = {}
    for line in text.splitlines():
        m = _SET.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def read_fragment(path: Path) -> list[ConfigLine]:
    lines = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        m = _SET.match(line)
        if m:
            lines.append(ConfigLine(m.group(1), m.group(2)))
            continue
        m = _UNSET.match(line)
        if m:
            lines.append(ConfigLine(m.group(1), "n"))
            continue
        if line and not line.startswith("#"):
            raise KernelError(
                f"{path}:{n}: {line!r} is not a configuration line "
                '(expected CONFIG_NAME=VALUE or "# CONFIG_NAME is not set")'
            )
    return lines


def base_config(kernel: Path = STOCK_KERNEL) -> str:
    """Debian's UML configuration, as its kernel prints it."""
    if not kernel.exists():
        raise KernelError(
            f"{kernel} is missing: the honeypot kernel's configuration starts from Debian's "
            "UML kernel's (apt-get install user-mode-linux)"
        )
    res = subprocess.run([str(kernel), "--showconfig"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0 or "CONFIG_UML=y" not in res.stdout:
        raise KernelError(f"`{kernel} --showconfig` printed no UML configuration")
    return res.stdout


def _package_version(package: str) -> str:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class BuildInputs:
    name: str
    tarball: Path
    tarball_sha256: str
    package_version: str  # Debian's version of the source package, e.g. 6.1.176-1
    base_config: str
    patches: tuple[Patch, ...]
    fragment: tuple[ConfigLine, ...]
    compiler: str
    build_env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        h = hashlib.sha256()
        h.update(f"warden-kernel {BUILDER_VERSION} {self.name}\n".encode())
        h.update(f"source {self.tarball_sha256} {self.package_version}\n".encode())
        h.update(hashlib.sha256(self.base_config.encode()).digest())
        for p in self.patches:
            h.update(p.name.encode() + b"\0" + hashlib.sha256(p.text).digest())
        for line in self.fragment:
            h.update(str(line).encode() + b"\n")
        h.update(self.compiler.encode() + b"\n")
        for k in sorted(self.build_env):
            h.update(f"{k}={self.build_env[k]}\n".encode())
        return h.hexdigest()[:16]

    def patched_files(self) -> set[str]:
        return {f for p in self.patches for f in p.files()}


def version_env(package_version: str, tarball: Path) -> dict[str, str]:
    """What the build stamps into `uname -v` and /proc/version: a Debian-looking string.

    UML's own would be "#1 <build date>" with the builder's user and host: it names the
    machine that built the honeypot, and lacks the "SMP PREEMPT_DYNAMIC" of Debian's kernels.
    """
    date = subprocess.run(
        ["date", "-u", "-r", str(tarball), "+%Y-%m-%d"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "KBUILD_BUILD_USER": "debian-kernel",
        "KBUILD_BUILD_HOST": "lists.debian.org",
        "KBUILD_BUILD_VERSION": "1",
        "KBUILD_BUILD_TIMESTAMP": f"SMP PREEMPT_DYNAMIC Debian {package_version} ({date})",
        "LOCALVERSION": "",
    }


def gather(name: str = "honeypot") -> BuildInputs:
    """Read every input of the named kernel's build; KernelError says what is missing."""
    if name not in KNOWN_KERNELS:
        raise KernelError(
            f"no kernel named {name!r} to build; warden builds: {', '.join(KNOWN_KERNELS)}"
        )
    directory = series_dir()
    if not SOURCE_TARBALL.is_file():
        raise KernelError(
            f"{SOURCE_TARBALL} is missing: apt-get install {SOURCE_PACKAGE} "
            "(`warden kernel build` installs it with the other build dependencies)"
        )
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    pkg = _package_version(SOURCE_PACKAGE)
    return BuildInputs(
        name=name,
        tarball=SOURCE_TARBALL,
        tarball_sha256=_file_sha256(SOURCE_TARBALL),
        package_version=pkg,
        base_config=base_config(),
        patches=tuple(read_series(directory)),
        fragment=tuple(read_fragment(directory / f"{name}.config")),
        compiler=cc.stdout.splitlines()[0] if cc.returncode == 0 and cc.stdout else "",
        build_env=version_env(pkg or "6.1", SOURCE_TARBALL),
    )
