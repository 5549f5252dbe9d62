"""Guests' FPU state across signals on AVX-512 hosts (docs/decisions/2026-11-29-xstate-shim.md).

Debian's UML 6.1 saves 832 bytes of a guest process's XSAVE area in its signal frames and
loses the rest (k0-7, the upper halves of zmm0-15, zmm16-31). Shown here with real guests:
the loss on the stock kernel (asserted: the evidence, and a canary for the day Debian fixes
it), none on warden's kernel (kernel/0000-xstate-signal-frames.patch), and the images'
mitigation for the stock kernel (glibc and OpenSSL kept off AVX-512 when the seed says
WARDEN_FPU_SAFE=1), which must turn a failing glibc stress into a passing one.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FLEET_HEAD, machine_toml
from tests.support.daemon import DaemonProc
from tests.support.netlab import guest_sh, wait_running
from tests.support.rawboot import RawGuest
from warden.images import debian
from warden.images.seed import Seed, write
from warden.images.store import ImageStore
from warden.paths import Layout, layout
from warden.progress import NullProgress
from warden.uml import kernel as ukernel
from warden.uml import xstate

DATA = Path(__file__).parents[1] / "data" / "fpu"
SRC = Path(__file__).parents[2] / "src" / "warden" / "images"
# the test programs (tests/data/fpu/*.c): name -> extra gcc flags
PROGRAMS = {
    "zmm_signals": ["-mavx512f"],
    "glibc_signals": ["-fno-builtin"],
    "sigframe_abi": ["-mavx512f"],
}
SIGNALS = 100  # each run lasts until this many signals came (or RUN_LIMIT seconds passed)
RUN_LIMIT = 150
TUNABLES = "glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512ER,-AVX512PF,-AVX512VL"
IA32CAP = ":~0x5842dc230000"

needs_avx512 = pytest.mark.skipif(
    not xstate.host_has_avx512(),
    reason="this host's CPU lacks avx512f (or its kernel has not enabled AVX-512 state): "
    "there is no AVX-512 state for a guest's signal handler to lose",
)


@dataclass
class Run:
    signals: int
    wrong: int  # zmm_signals: signals after which a register was wrong
    crashed: bool
    text: str


def parse(out: str, program: str) -> Run:
    if program == "zmm_signals":
        m = re.search(r"zmm: signals (\d+) corrupted (\d+)", out)
    else:
        m = re.search(r"glibc: signals (\d+) (?:wrong (\d+)|crashed)", out)
    assert m, f"no result from {program} in {out!r}"
    return Run(int(m.group(1)), int(m.group(2) or 0), m.group(2) is None, m.group(0))


def command(program: str) -> str:
    return f"{program} {SIGNALS} {RUN_LIMIT}"


# ---------------------------------------------------------------------------------------------
# fixtures: the test programs in a copy of the minimal image, warden's kernel


@dataclass
class Programs:
    bin: Path  # the programs, to run on the host
    image: Path  # the minimal image with them in /usr/bin


@pytest.fixture(scope="module")
def programs(minimal_image: Path) -> Iterator[Programs]:
    """The test programs, compiled static (as busybox is), and a copy of the minimal image
    with them in /usr/bin."""
    tmp = Path(tempfile.mkdtemp(prefix="fpu-img-", dir="/tmp"))
    try:
        for name, flags in PROGRAMS.items():
            subprocess.run(
                ["gcc", "-static", "-O1", "-Wall", "-Werror", *flags, "-o", str(tmp / name)]
                + [str(DATA / f"{name}.c")],
                check=True,
                capture_output=True,
            )
        image = tmp / "fpu.img"
        subprocess.run(["cp", "--sparse=always", str(minimal_image), str(image)], check=True)
        cmds = "".join(
            f"write {tmp / name} /usr/bin/{name}\nsif /usr/bin/{name} mode 0100755\n"
            for name in PROGRAMS
        )
        subprocess.run(
            ["debugfs", "-w", "-f", "-", str(image)],
            input=cmds,
            text=True,
            check=True,
            capture_output=True,
        )
        yield Programs(tmp, image)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def fixed_kernel() -> Path:
    """warden's honeypot kernel (built or taken from the cache), which carries the fix."""
    from tests.support.honeypot import honeypot_kernel

    k = honeypot_kernel()
    meta = json.loads((k.parent / "meta.json").read_text())
    assert xstate.kernel_keeps_xstate(k), f"{k} was built without it: {meta['patches']}"
    return k


def raw_guest(
    home: Layout, image: Path, name: str, kernel: Path | None, seed: Seed, memory: int = 64 << 20
) -> RawGuest:
    d = home.machine(name)
    d.mkdir(parents=True)
    write(d / "seed.img", seed)
    return RawGuest(
        home, image, d / "disk.cow", memory=memory, kernel_path=kernel, seed=d / "seed.img"
    )


# a first build of warden's kernel takes ~7 minutes on 2 idle cores, much longer loaded
KERNEL_BUILD_TIMEOUT = 3600


# ---------------------------------------------------------------------------------------------
# the kernels


@pytest.mark.guest
@pytest.mark.timeout(KERNEL_BUILD_TIMEOUT)
@needs_avx512
def test_stock_kernel_loses_avx512_state_across_signals_warden_kernel_keeps_it(
    home: Layout,
    programs: Programs,
    fixed_kernel: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with raw_guest(home, programs.image, "stock", None, Seed(hostname="stock")) as g:
        g.wait_prompt(120)
        stock = parse(g.run(command("zmm_signals"), RUN_LIMIT + 60), "zmm_signals")
    # Debian's kernel: a signal handler's k1, zmm15 (upper half) and zmm16 leak into the code
    # it interrupted. The day this fails, Debian's linux.uml saves the whole XSAVE area:
    # WARDEN_FPU_SAFE is then no longer needed for it (src/warden/uml/xstate.py).
    assert stock.signals >= SIGNALS and stock.wrong > 0, stock.text

    # warden's kernel, booted with an empty library in place of the xstate shim: it moves the
    # host's whole XSAVE area through ptrace by itself (the stock kernel cannot run user space
    # so on an AMX host)
    noshim = tmp_path / "noshim.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(noshim), "-x", "c", "/dev/null"], check=True
    )
    monkeypatch.setattr(ukernel, "xstate_shim", lambda layout: noshim)
    with raw_guest(home, programs.image, "fixed", fixed_kernel, Seed(hostname="fixed")) as g:
        g.wait_prompt(120)
        fixed = parse(g.run(command("zmm_signals"), RUN_LIMIT + 60), "zmm_signals")
        abi_guest = g.run("sigframe_abi", 60)
    # none lost, out of as many signals
    assert fixed.signals >= SIGNALS and fixed.wrong == 0, fixed.text
    # and its signal frames are the host kernel's, as a program sees them: layout, software
    # bytes, the handler's fresh state, sigreturn from edited, broken and missing FP frames
    abi_host = subprocess.run(
        [str(programs.bin / "sigframe_abi")], capture_output=True, text=True, check=True
    ).stdout
    lines = [ln for ln in abi_guest.replace("\r", "").splitlines() if ":" in ln]
    assert lines == abi_host.splitlines()


# ---------------------------------------------------------------------------------------------
# the mitigation, through the daemon: it tells a stock-kernel guest (only) to stay off AVX-512


@pytest.mark.guest
@pytest.mark.timeout(KERNEL_BUILD_TIMEOUT)
@needs_avx512
def test_stock_kernel_guests_keep_glibc_off_avx512_and_compute_right(
    daemon: DaemonProc, programs: Programs, fixed_kernel: Path
) -> None:
    daemon.apply(
        FLEET_HEAD
        + machine_toml("stock1", image=str(programs.image))
        + machine_toml("fixed1", image=str(programs.image), kernel=str(fixed_kernel))
    )
    wait_running(daemon, "stock1", "fixed1")
    env = "echo tunables=$GLIBC_TUNABLES ia32cap=$OPENSSL_ia32cap"
    assert guest_sh(daemon, "stock1", env).split() == [
        f"tunables={TUNABLES}",
        f"ia32cap={IA32CAP}",
    ]
    # the same guest with glibc free to use AVX-512 computes wrong answers (or runs off a
    # buffer) under signals: the stress below can fail...
    bare = parse(
        guest_sh(
            daemon,
            "stock1",
            "env -u GLIBC_TUNABLES -u OPENSSL_ia32cap " + command("glibc_signals"),
            RUN_LIMIT + 60,
        ),
        "glibc_signals",
    )
    assert bare.crashed or bare.wrong > 0, bare.text
    # ...and passes with what the image set for every process
    safe = parse(
        guest_sh(daemon, "stock1", command("glibc_signals"), RUN_LIMIT + 60), "glibc_signals"
    )
    assert safe.signals >= SIGNALS and not safe.crashed and safe.wrong == 0, safe.text

    # warden's kernel: no variables (a honeypot's visitors see nothing), glibc uses AVX-512
    # and is right all the same
    assert guest_sh(daemon, "fixed1", env).split() == ["tunables=", "ia32cap="]
    fixed = parse(
        guest_sh(daemon, "fixed1", command("glibc_signals"), RUN_LIMIT + 60), "glibc_signals"
    )
    assert fixed.signals >= SIGNALS and not fixed.crashed and fixed.wrong == 0, fixed.text
    # (the daemon starts it with the shim, as every kernel: the registers survive as well)
    zmm = parse(guest_sh(daemon, "fixed1", command("zmm_signals"), RUN_LIMIT + 60), "zmm_signals")
    assert zmm.signals >= SIGNALS and zmm.wrong == 0, zmm.text


@pytest.fixture(scope="module")
def debian_image() -> Path:
    lay = layout(Path(os.environ.get("WARDEN_TEST_IMAGE_HOME", "/tmp/warden-test-images")))
    lay.ensure()
    return debian.build(ImageStore(lay), NullProgress())


LEAF7_EBX_AVX512 = {"AVX512F": 16, "AVX512DQ": 17, "AVX512CD": 28, "AVX512BW": 30, "AVX512VL": 31}


def leaf7_ebx(diagnostics: str, kind: str) -> int:
    """CPUID leaf 7 EBX as glibc's ld.so sees it: `cpuid` (the CPU) or `active` (usable)."""
    # features[1] is leaf 7 (COMMON_CPUID_INDEX_7); words are eax, ebx, ecx, edx
    m = re.search(rf"x86\.cpu_features\.features\[0x1\]\.{kind}\[0x1\]=(0x[0-9a-f]+)", diagnostics)
    assert m, f"no leaf 7 {kind} word in:\n{diagnostics[:2000]}"
    return int(m.group(1), 16)


@pytest.mark.guest
@pytest.mark.timeout(1800)  # a first build of the Debian image, then a boot
@needs_avx512
def test_debian_image_on_the_stock_kernel_keeps_glibc_off_avx512(
    home: Layout, debian_image: Path
) -> None:
    seed = Seed(hostname="deb", fpu_safe=True)
    with raw_guest(home, debian_image, "deb", None, seed, memory=256 << 20) as g:
        g.wait_prompt(600)  # root is logged in on the console (no root password)

        def sh(cmd: str) -> str:
            return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", g.run(cmd, 300))

        sh("systemctl is-system-running --wait")  # sshd is up

        # systemd hands it to every unit started after the seed (sshd), pam_env to logins
        sshd = sh("cat /proc/$(pidof -s sshd)/environ | tr '\\0' '\\n'").split()
        assert f"GLIBC_TUNABLES={TUNABLES}" in sshd and f"OPENSSL_ia32cap={IA32CAP}" in sshd
        assert sh("echo $GLIBC_TUNABLES").split() == [TUNABLES]
        # what glibc 2.36 then uses: the CPU has AVX-512, ld.so does not take it
        diag = sh("/lib64/ld-linux-x86-64.so.2 --list-diagnostics")
        cpu, active = leaf7_ebx(diag, "cpuid"), leaf7_ebx(diag, "active")
        for feature, bit in LEAF7_EBX_AVX512.items():
            assert cpu >> bit & 1, f"the CPU lacks {feature}? {diag[:2000]}"
            assert not active >> bit & 1, f"glibc still uses {feature}"
        # nor does it search AVX-512 libraries (glibc-hwcaps/x86-64-v4)
        assert re.search(r"x86-64-v4\s*\n", sh("/lib64/ld-linux-x86-64.so.2 --help"))
        # without the variable (as on warden's kernel) it would
        bare = sh("env -u GLIBC_TUNABLES /lib64/ld-linux-x86-64.so.2 --list-diagnostics")
        assert leaf7_ebx(bare, "active") >> LEAF7_EBX_AVX512["AVX512VL"] & 1


# ---------------------------------------------------------------------------------------------
# no guest: the decision, the seed, the images agree


def test_which_kernels_need_the_mitigation(tmp_path: Path) -> None:
    with_avx = tmp_path / "cpuinfo-avx512"
    with_avx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512vl\n")
    without = tmp_path / "cpuinfo-avx2"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_fake\n")
    fixed, old, bare = (tmp_path / n for n in ("fixed", "old", "bare"))
    for d in (fixed, old, bare):
        d.mkdir()
        (d / "linux").write_bytes(b"")
    (fixed / "meta.json").write_text(json.dumps({"patches": [xstate.XSTATE_PATCH, "0001-x"]}))
    (old / "meta.json").write_text(json.dumps({"patches": ["0001-tty-log.patch"]}))

    assert xstate.host_has_avx512(with_avx) and not xstate.host_has_avx512(without)
    assert xstate.guest_needs_fpu_safe(bare / "linux", with_avx)  # Debian's, or any path
    assert xstate.guest_needs_fpu_safe(old / "linux", with_avx)  # built before the fix
    assert not xstate.guest_needs_fpu_safe(fixed / "linux", with_avx)
    assert not xstate.guest_needs_fpu_safe(bare / "linux", without)  # nothing to lose
    (old / "meta.json").write_text("{not json")
    assert xstate.guest_needs_fpu_safe(old / "linux", with_avx)


def seed_env(image: Path) -> str:
    out = subprocess.run(
        ["debugfs", "-R", "cat /seed.env", str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_the_seed_says_fpu_safe_only_when_told(tmp_path: Path) -> None:
    write(tmp_path / "safe.img", Seed(hostname="a", fpu_safe=True))
    write(tmp_path / "plain.img", Seed(hostname="a"))
    assert "WARDEN_FPU_SAFE=1\n" in seed_env(tmp_path / "safe.img")
    assert "WARDEN_FPU_SAFE" not in seed_env(tmp_path / "plain.img")


def test_both_images_set_the_same_values() -> None:
    for script in (SRC / "minimal" / "init", SRC / "debian" / "seed.sh"):
        text = script.read_text()
        assert f"GLIBC_TUNABLES={TUNABLES}" in text, script
        assert f"OPENSSL_ia32cap={IA32CAP}" in text, script
