"""What the honeypot tests share: the honeypot kernel (built once through `warden kernel
build`'s cached path), a test image carrying virt-what and systemd-detect-virt, and a tty log
pipe drained by a thread for tests that drive a guest synchronously."""

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from warden.images.store import ImageStore
from warden.paths import Layout, layout
from warden.progress import PlainProgress
from warden.sessionlog.ttylog import Record, TtyLogDecoder

VIRT_IMAGE_VERSION = "1"


def shared_layout() -> Layout:
    """The home the test session builds its artefacts into (as conftest's minimal_image)."""
    lay = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    return lay


@functools.cache
def honeypot_kernel() -> Path:
    """The honeypot kernel, built (or found in the cache) the way `warden kernel build` does.

    A first build takes ~7 minutes on 2 cores (CI builds it once; the cache keeps it); its
    progress goes to the real stderr so CI logs show it.
    """
    from warden.kernelbuild import build

    return build.build(
        shared_layout(), "honeypot", PlainProgress("kernel honeypot", sys.__stderr__)
    )


# ---- an image with the two detectors ---------------------------------------------------


def _virt_what_files(workdir: Path) -> tuple[Path, Path]:
    """Debian's virt-what script and its CPUID helper: the host's, or unpacked from apt."""
    script, helper = Path("/usr/sbin/virt-what"), Path("/usr/libexec/virt-what-cpuid-helper")
    if script.exists() and helper.exists():
        return script, helper
    subprocess.run(
        ["apt-get", "download", "virt-what"], cwd=workdir, check=True, capture_output=True
    )
    deb = next(workdir.glob("virt-what_*.deb"))
    root = workdir / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr/sbin/virt-what", root / "usr/libexec/virt-what-cpuid-helper"


def _libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


@functools.cache
def virt_image() -> Path:
    """A read-only ext4 image: busybox, virt-what (+ helper), systemd-detect-virt and the
    libraries they need, laid out as a root to chroot into. Cached by its inputs."""
    detect = Path("/usr/bin/systemd-detect-virt")
    if not detect.exists():
        raise RuntimeError("systemd-detect-virt is missing on the host (apt-get install systemd)")
    lay = shared_layout()
    with tempfile.TemporaryDirectory(prefix="warden-virt-") as tmp:
        work = Path(tmp)
        script, helper = _virt_what_files(work)
        binaries = [Path("/bin/busybox"), script, helper, detect]
        libs = sorted({lib for b in (helper, detect) for lib in _libraries(b)})
        h = hashlib.sha256(f"virt {VIRT_IMAGE_VERSION}\n".encode())
        for f in [*binaries, *libs]:
            h.update(str(f).encode() + b"\0" + f.read_bytes())
        key = h.hexdigest()[:12]
        store = ImageStore(lay)
        cached = store.cached("virt", key)
        if not cached.exists():
            root = work / "root"
            for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/libexec", "proc", "sys", "dev"):
                (root / d).mkdir(parents=True, exist_ok=True)
            (root / "tmp").mkdir(mode=0o1777)
            shutil.copy2("/bin/busybox", root / "bin/busybox")
            for applet in ("sh", "grep", "cat", "uname", "id", "test", "[", "echo", "which"):
                (root / "bin" / applet).symlink_to("busybox")
            shutil.copy2(script, root / "usr/sbin/virt-what")
            shutil.copy2(helper, root / "usr/libexec/virt-what-cpuid-helper")
            shutil.copy2(detect, root / "usr/bin/systemd-detect-virt")
            for lib in libs:
                dest = root / str(lib).lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib.resolve(), dest)
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.partial{os.getpid()}")
            subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-d", str(root), str(partial), "64M"],
                check=True,
                capture_output=True,
            )
            partial.chmod(0o444)
            os.replace(partial, cached)
    return cached


# In the guest: the image is the seed disk (ubdb); mount it and chroot into it.
VIRT_SETUP = (
    "mount -o ro /dev/ubdb /mnt && mount -t proc proc /mnt/proc && "
    "mount -t sysfs sysfs /mnt/sys && mount -t devtmpfs devtmpfs /mnt/dev"
)
VIRT_WHAT = "chroot /mnt /usr/sbin/virt-what"
DETECT_VIRT = "chroot /mnt /usr/bin/systemd-detect-virt"


# ---- a tty log read by a thread --------------------------------------------------------


class LogCapture:
    """A pipe for `tty_log_fd=`, read into memory by a thread (for synchronous tests).

    `pause()` stops reading, so the pipe fills as it would behind a stalled host.
    """

    def __init__(self, pipe_size: int = 1 << 20):
        r, w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, pipe_size)
        os.set_inheritable(w, True)
        self.read_fd, self.write_fd = r, w
        self.data = bytearray()
        self._go = threading.Event()
        self._go.set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @property
    def kernel_arg(self) -> str:
        return f"tty_log_fd={self.write_fd}"

    def _pump(self) -> None:
        while True:
            self._go.wait()
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            self.data += chunk
        self._done.set()

    def kernel_started(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def records(self) -> tuple[TtyLogDecoder, list[Record]]:
        """Every whole record so far (a record being written may still be missing)."""
        d = TtyLogDecoder()
        return d, d.feed(bytes(self.data))

    def close(self) -> None:
        """After the guest is gone: read to the end of the log, then close."""
        self.kernel_started()
        self.resume()
        self._done.wait(10)  # EOF once the kernel process (the last writer) has exited
        os.close(self.read_fd)
