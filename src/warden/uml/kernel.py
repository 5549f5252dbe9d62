"""Finding a UML kernel to boot, and what it needs from the host to run.

A kernel is named in the fleet file by `kernel = "stock"` (Debian's /usr/bin/linux.uml, the
default), by the name of a kernel warden built (WARDEN_HOME/kernels/NAME/linux), or by a path.

Debian's linux.uml saves guest FPU state through a fixed 2696-byte buffer, which hosts with a
larger XSAVE area (AMX) refuse; warden loads a small shim with LD_PRELOAD that fixes this for any
dynamically linked kernel (see xstate_shim.c for the whole story). The shim is compiled once
per machine into the cache, keyed by its source and the compiler.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from warden.errors import KernelError
from warden.paths import Layout

STOCK_KERNEL = Path(os.environ.get("WARDEN_STOCK_KERNEL", "/usr/bin/linux.uml"))


@dataclass(frozen=True)
class Kernel:
    name: str  # "stock", a built kernel's name, or the path as given
    path: Path

    def version(self) -> str:
        out = subprocess.run(
            [str(self.path), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()


def resolve(layout: Layout, spec: str = "stock") -> Kernel:
    """The kernel `spec` names; KernelError says what is missing and how to get it."""
    if spec == "stock":
        path = STOCK_KERNEL
        if not path.exists():
            raise KernelError(
                f"no UML kernel installed: {path} is missing. "
                "Install Debian's kernel with `apt-get install user-mode-linux` "
                "(or run `make up`, which does)."
            )
    elif "/" in spec:
        path = Path(spec)
        if not path.exists():
            raise KernelError(f"kernel {spec!r}: no such file")
    else:
        path = layout.kernels / spec / "linux"
        if not path.exists():
            known = sorted(p.name for p in layout.kernels.glob("*") if (p / "linux").exists())
            raise KernelError(
                f"kernel {spec!r} is not built in {layout.kernels}; known: "
                f"{', '.join(['stock', *known])}. Build it with `warden kernel build {spec}`."
            )
    if not os.access(path, os.X_OK):
        if os.statvfs(path).f_flag & os.ST_NOEXEC:
            raise KernelError(
                f"kernel {path} is on a filesystem mounted noexec, which refuses to run or map "
                "it executable: put it on one that allows exec"
            )
        raise KernelError(f"kernel {path} is not executable")
    return Kernel(name=spec, path=path)


def _shim_source() -> bytes:
    return resources.files("warden.uml").joinpath("xstate_shim.c").read_bytes()


def _compiler_id(cc: str) -> bytes:
    out = subprocess.run([cc, "--version"], capture_output=True, check=True)
    return out.stdout.splitlines()[0] if out.stdout else b""


_shims: dict[Path, Path] = {}  # cache dir -> built shim, so a boot costs no compiler call


def xstate_shim(layout: Layout) -> Path:
    """Path of the compiled shim, building it into the cache on first use."""
    known = _shims.get(layout.cache)
    if known is not None and known.exists():
        return known
    _shims[layout.cache] = path = _build_shim(layout)
    return path


def _build_shim(layout: Layout) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    src = _shim_source()
    if cc is None:
        raise KernelError(
            "gcc is needed once to build warden's ptrace shim for linux.uml: "
            "apt-get install gcc libc6-dev"
        )
    key = hashlib.sha256(src + b"\0" + _compiler_id(cc)).hexdigest()[:16]
    out = layout.cache / "shim" / key / "xstate_shim.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # The first boots of a fleet ask for the shim at once, from the daemon's executor threads
    # (one pid) and from other processes (another home's daemon, `warden doctor`). The lock
    # makes one of them build it; the others wait and find it built. flock excludes threads
    # too, since each call opens the lock file anew.
    lock = os.open(out.parent / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            _compile(cc, src, out)
    finally:
        os.close(lock)
    return out


def _compile(cc: str, src: bytes, out: Path) -> None:
    """Build `out` from `src`, through names of this call's own, replaced into place at the end
    (a lock left by a killed builder is released by the kernel; its temporaries are only
    litter, never read)."""
    c_file = out.parent / "xstate_shim.c"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as scratch:
        c_tmp = Path(scratch) / "xstate_shim.c"
        c_tmp.write_bytes(src)
        tmp = Path(scratch) / "xstate_shim.so"
        res = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(c_tmp)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise KernelError(f"building {c_file} failed:\n{res.stderr}")
        tmp.chmod(0o755)
        os.replace(c_tmp, c_file)  # kept beside the shim: what it was built from
        os.replace(tmp, out)  # atomic: a reader without the lock sees nothing or the whole file
