"""Whether a guest's AVX-512 register state survives its signal handlers.

Debian's UML 6.1 copies 832 bytes of a guest process's XSAVE area (x87, SSE, the AVX upper
halves of ymm0-15) into a signal frame and back: on a host with AVX-512, the opmask
registers, the upper halves of zmm0-15 and zmm16-31 of the interrupted code are whatever the
handler left in them. glibc's EVEX string functions keep values there, so guest processes
compute wrong answers or crash. Kernels warden builds carry kernel/0000-xstate-signal-frames.
patch, which saves the whole area; for any other kernel the guest's image keeps glibc and
OpenSSL off AVX-512 when the seed says WARDEN_FPU_SAFE=1 (docs/architecture.md, "The xstate
shim"; docs/formats/seed.md).
"""

import functools
import json
from pathlib import Path

XSTATE_PATCH = "0000-xstate-signal-frames.patch"  # the fix, in warden's kernel series
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def host_has_avx512(cpuinfo: Path = CPUINFO) -> bool:
    """Does this host give processes AVX-512 state? (Linux lists avx512f only when the
    OS has enabled the opmask and ZMM state in XCR0.)"""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return "avx512f" in line.split(":", 1)[-1].split()
    return False


def kernel_keeps_xstate(kernel: Path) -> bool:
    """Is `kernel` a build of warden's series with the fix? Its meta.json (written beside it
    by `warden kernel build`) lists the patches. Kernels without one (Debian's, any file
    given by path) are taken to lack it."""
    try:
        meta = json.loads((kernel.parent / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    patches = meta.get("patches") if isinstance(meta, dict) else None
    return isinstance(patches, list) and XSTATE_PATCH in patches


def guest_needs_fpu_safe(kernel: Path, cpuinfo: Path = CPUINFO) -> bool:
    """Should guests of `kernel` on this host run user space without AVX-512?"""
    return host_has_avx512(cpuinfo) and not kernel_keeps_xstate(kernel)
