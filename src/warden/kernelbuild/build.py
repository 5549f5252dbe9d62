"""Building the honeypot kernel: install what the build needs, patch, configure, make, cache.

    WARDEN_CACHE/kernels/KEY/linux          a finished build (stripped), with config and meta.json
    WARDEN_CACHE/kernels/work/src/          the patched source of the latest build
    WARDEN_CACHE/kernels/work/obj/          make's output directory (O=), kept between builds
    WARDEN_CACHE/kernels/work/state.json    what the tree under work/ was built from
    WARDEN_HOME/kernels/NAME/linux          the kernel NAME in this home (a link to the cache)

A changed patch rebuilds only what it changes: the source is unpacked afresh for every build
(tar keeps the tarball's old mtimes, so make sees untouched files as up to date against the
kept objects), the new series is applied, a patched file whose content is the same as in the
previous build gets that build's mtime back, and files the previous series changed but this
one does not are touched so that make rebuilds them from the pristine source. Everything
about the work tree happens under a lock, so two builds on one machine (two test sessions)
take turns.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from warden.errors import KernelError
from warden.kernelbuild.source import BuildInputs, gather, parse_config
from warden.paths import Layout
from warden.progress import NullProgress, Progress

# apt package -> what shows it is installed (a command on PATH or a file)
BUILD_DEPENDENCIES: dict[str, str] = {
    "make": "make",
    "gcc": "gcc",
    "bc": "bc",
    "bison": "bison",
    "flex": "flex",
    "patch": "patch",
    "xz-utils": "xz",
    "binutils": "strip",
    "libssl-dev": "/usr/include/openssl/ssl.h",
    "libelf-dev": "/usr/include/libelf.h",
    "libvdeplug-dev": "/usr/include/libvdeplug.h",
    "linux-source-6.1": "/usr/src/linux-source-6.1.tar.xz",
    "user-mode-linux": "/usr/bin/linux.uml",
}
FULL_BUILD_UNITS = 1950  # make's "  CC  foo.o"-style lines in a full build (measured: 1948)
_STEP = re.compile(r"^  ([A-Z][A-Z0-9_]*) +\S")


def missing_dependencies() -> list[str]:
    out = []
    for package, probe in BUILD_DEPENDENCIES.items():
        found = Path(probe).exists() if probe.startswith("/") else shutil.which(probe)
        if not found:
            out.append(package)
    return out


def install_dependencies(progress: Progress) -> None:
    """apt-get install whatever the build lacks (nothing when all is there)."""
    missing = missing_dependencies()
    if not missing:
        return
    if os.geteuid() != 0:
        raise KernelError(
            "building the honeypot kernel needs these Debian packages: "
            f"{' '.join(missing)}; install them as root (apt-get install {' '.join(missing)})"
        )
    progress.step(f"installing build dependencies: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:  # a stale package list: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0 or missing_dependencies():
        raise KernelError(
            f"could not install the kernel's build dependencies ({' '.join(missing)}):\n"
            + (res.stderr or res.stdout)[-2000:]
        )


@dataclass(frozen=True)
class KernelInfo:
    name: str
    path: Path
    key: str
    version: str
    size: int
    meta: dict[str, object]

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": str(self.path),
            "key": self.key,
            "version": self.version,
            "size": self.size,
            **{k: v for k, v in self.meta.items() if k not in ("name", "key", "version")},
        }


def cache_dir(layout: Layout) -> Path:
    return layout.cache / "kernels"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _unpack(tarball: Path, dest: Path, progress: Progress) -> None:
    """Unpack Debian's tarball (top directory linux-source-6.1/) into dest, mtimes kept."""
    progress.step(f"unpacking {tarball.name}")
    dest.mkdir(parents=True)
    # tar(1) is several times faster than tarfile on xz; both keep the archive's mtimes
    res = subprocess.run(
        ["tar", "-xf", str(tarball), "-C", str(dest), "--strip-components=1"],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise KernelError(f"unpacking {tarball} failed: {res.stderr.strip()[-1000:]}")
    if not (dest / "Makefile").exists() or not (dest / "arch/um").is_dir():
        raise KernelError(f"{tarball} does not hold a Linux source tree with arch/um")


def _apply(inputs: BuildInputs, src: Path, progress: Progress) -> None:
    progress.step(f"applying {len(inputs.patches)} patches")
    for patch in inputs.patches:
        res = subprocess.run(
            ["patch", "-p1", "-F0", "--forward", "--no-backup-if-mismatch", "-s"],
            cwd=src,
            input=patch.text,
            capture_output=True,
        )
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace").strip()
            raise KernelError(
                f"patch {patch.name} does not apply to {inputs.tarball.name} "
                f"({inputs.package_version or 'unknown version'}):\n{out[-1500:]}"
            )


def _touch(src: Path, files: set[str]) -> None:
    now = time.time()
    for name in files:
        path = src / name
        if path.exists():
            os.utime(path, (now, now))


def _keep_mtimes(old_tree: Path, new_tree: Path, files: set[str]) -> None:
    for name in files:
        old, new = old_tree / name, new_tree / name
        try:
            if old.read_bytes() == new.read_bytes():
                st = old.stat()
                os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            pass  # no old copy: the new mtime makes make rebuild it


def _configure(inputs: BuildInputs, src: Path, obj: Path, env: dict[str, str]) -> None:
    """Debian's configuration + the fragment, completed by olddefconfig, then checked."""
    config = obj / ".config"
    config.write_text(
        inputs.base_config.rstrip("\n") + "\n" + "".join(f"{c}\n" for c in inputs.fragment)
    )
    res = subprocess.run(
        ["make", "-C", str(src), f"O={obj}", "ARCH=um", "olddefconfig"],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        raise KernelError(f"make olddefconfig failed:\n{(res.stdout + res.stderr)[-2000:]}")
    final = parse_config(config.read_text())
    wrong = [c for c in inputs.fragment if not c.holds_in(final)]
    if wrong:
        raise KernelError(
            "the kernel configuration does not take "
            + ", ".join(f"'{c}' (it is {final.get(c.option, 'not set')!r})" for c in wrong)
            + f" from {inputs.name}.config: an option it depends on is missing "
            "(see `make ARCH=um menuconfig` in the source tree for its dependencies)"
        )


def _make(
    src: Path, obj: Path, env: dict[str, str], log: Path, total: int, progress: Progress
) -> int:
    """Run make, turning its "  CC  file" lines into progress; returns the number of steps."""
    jobs = str(os.cpu_count() or 2)
    cmd = ["make", "-C", str(src), f"O={obj}", "ARCH=um", f"-j{jobs}", "linux"]
    progress.step(f"compiling ({' '.join(cmd[3:])})")
    progress.total(total)
    steps = 0
    with (
        log.open("w") as out,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if _STEP.match(line):
                steps += 1
                progress.advance(1)
        code = proc.wait()
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise KernelError(f"make failed (exit {code}); the end of {log}:\n" + "\n".join(tail))
    return steps


def _state(work: Path) -> dict[str, object]:
    try:
        data = json.loads((work / "state.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _build_into(inputs: BuildInputs, layout: Layout, out_dir: Path, progress: Progress) -> None:
    work = cache_dir(layout) / "work"
    src, obj = work / "src", work / "obj"
    state = _state(work)
    env = {**os.environ, **inputs.build_env, "LC_ALL": "C"}
    fresh = work / "src.new"
    shutil.rmtree(fresh, ignore_errors=True)
    _unpack(inputs.tarball, fresh, progress)
    _apply(inputs, fresh, progress)
    patched = inputs.patched_files()
    before = state.get("patched", [])
    previously = {str(f) for f in before} if isinstance(before, list) else set()
    # make must rebuild what the last series changed and this one leaves pristine...
    _touch(fresh, previously - patched)
    # ...and only what this series changes: a patched file identical to the last build's
    # keeps that build's mtime (patch gave it a new one)
    _keep_mtimes(src, fresh, patched & previously)
    if state.get("tarball_sha256") != inputs.tarball_sha256:
        shutil.rmtree(obj, ignore_errors=True)  # objects of another source: start over
    shutil.rmtree(src, ignore_errors=True)
    os.replace(fresh, src)
    obj.mkdir(parents=True, exist_ok=True)
    (work / "state.json").write_text(
        json.dumps({"tarball_sha256": inputs.tarball_sha256, "patched": sorted(patched)})
    )
    progress.step("configuring")
    _configure(inputs, src, obj, env)
    full = not (obj / "linux").exists()
    total = FULL_BUILD_UNITS if full else max(40, 3 * len(patched | previously))
    t0 = time.monotonic()
    steps = _make(src, obj, env, work / "build.log", total, progress)
    seconds = time.monotonic() - t0
    progress.step("stripping and caching the kernel")
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res = subprocess.run(
        ["strip", "-o", str(tmp / "linux"), str(obj / "linux")], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise KernelError(f"strip {obj / 'linux'} failed: {res.stderr.strip()}")
    shutil.copy2(obj / ".config", tmp / "config")
    version = subprocess.run(
        [str(tmp / "linux"), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    meta = {
        "name": inputs.name,
        "key": inputs.key,
        "version": version,
        "source": f"{inputs.tarball.name} {inputs.package_version}",
        "patches": [p.name for p in inputs.patches],
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(seconds, 1),
        "make_steps": steps,
        "incremental": not full,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not (out_dir / "linux").exists():
            raise
        shutil.rmtree(tmp)  # the same build is already there


def build(layout: Layout, name: str = "honeypot", progress: Progress | None = None) -> Path:
    """The kernel `name`, built (or taken from the cache) and installed in this home."""
    return install(layout, name, cached(layout, name, progress))


def cached(layout: Layout, name: str = "honeypot", progress: Progress | None = None) -> Path:
    """The cache directory of the kernel `name` as the current series builds it, built first
    if missing. Its `linux` never changes (the key names its inputs): a fleet can name it by
    path where a home's link, which the next build in that home moves, would not do."""
    p = progress or NullProgress()
    install_dependencies(p)
    inputs = gather(name)
    out_dir = cache_dir(layout) / inputs.key
    if not (out_dir / "linux").exists():
        with _locked(cache_dir(layout) / "work.lock"):
            if not (out_dir / "linux").exists():  # another builder may have finished it
                _build_into(inputs, layout, out_dir, p)
    else:
        p.step(f"kernel {name} {inputs.key} is in the cache")
    return out_dir


def install(layout: Layout, name: str, built: Path) -> Path:
    """Make the cached build `built` the kernel `name` of this home (atomically)."""
    dest_dir = layout.kernels / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / "linux"
    tmp = dest_dir / f".linux.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(built / "linux", tmp)  # same filesystem: no copy
    except OSError:
        shutil.copy2(built / "linux", tmp)
    os.replace(tmp, dest)
    # rename(2) of two links to one file does nothing and leaves the temporary name behind
    tmp.unlink(missing_ok=True)
    for old in dest_dir.glob(".linux.tmp*"):  # of installers that died or hit the above
        if not _alive(old.name.removeprefix(".linux.tmp")):
            old.unlink(missing_ok=True)
    meta_tmp = dest_dir / f".meta.json.tmp{os.getpid()}"
    shutil.copyfile(built / "meta.json", meta_tmp)
    os.replace(meta_tmp, dest_dir / "meta.json")
    return dest


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


def ls(layout: Layout) -> list[KernelInfo]:
    """The kernels built into this home."""
    out: list[KernelInfo] = []
    if not layout.kernels.is_dir():
        return out
    for d in sorted(layout.kernels.iterdir()):
        linux = d / "linux"
        if not linux.is_file():
            continue
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        out.append(
            KernelInfo(
                name=d.name,
                path=linux,
                key=str(meta.get("key", "")),
                version=str(meta.get("version", "")),
                size=linux.stat().st_size,
                meta=meta if isinstance(meta, dict) else {},
            )
        )
    return out
