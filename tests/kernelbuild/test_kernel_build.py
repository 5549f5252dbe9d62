"""The kernel builder's logic: series and configuration inputs, the cache key, install/ls,
and incremental rebuilds, on a miniature source tree built with the real tools (tar, patch,
make, gcc, strip) in the same steps as the honeypot kernel."""

import itertools
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from warden.cli.main import main as cli
from warden.errors import KernelError
from warden.kernelbuild import build as kbuild
from warden.kernelbuild import source
from warden.kernelbuild.source import BuildInputs, ConfigLine, Patch
from warden.paths import Layout
from warden.progress import NullProgress

_n = itertools.count()
REPO_KERNEL = Path(__file__).resolve().parents[2] / "kernel"

# olddefconfig drops CONFIG_FOO, as Kconfig drops an option whose dependencies are unmet
MAKEFILE = """\
O ?= .
olddefconfig:
\t@grep -v '^CONFIG_FOO=' $(O)/.config > $(O)/.config.new; mv $(O)/.config.new $(O)/.config
$(O)/%.o: %.c
\t@echo "  CC      $@"
\t@gcc -c $< -o $@
.PHONY: linux
linux: $(O)/linux
$(O)/linux: $(O)/a.o $(O)/b.o $(O)/main.o
\t@echo "  LD      $@"
\t@gcc -o $@ $^
"""
MAIN_C = """#include <stdio.h>
const char *a(void);
const char *b(void);
int main(void) { printf("%s %s\\n", a(), b()); return 0; }
"""


def patch_for(name: str, old: str, new: str) -> Patch:
    text = (
        f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n"
        f'-const char *{old[0]}(void) {{ return "{old}"; }}\n'
        f'+const char *{new[0]}(void) {{ return "{new}"; }}\n'
    )
    return Patch(f"{name}.patch", text.encode())


@pytest.fixture
def kcache(tmp_path: Path) -> Layout:
    """A home with a cache of its own: these builds must never touch the shared kernel cache."""
    lay = Layout(home=tmp_path / "home", cache=tmp_path / "cache")
    lay.ensure()
    return lay


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    tree = tmp_path / "tree" / "linux-source-6.1"
    (tree / "arch/um").mkdir(parents=True)
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "a.c").write_text('const char *a(void) { return "a-orig"; }\n')
    (tree / "b.c").write_text('const char *b(void) { return "b-orig"; }\n')
    (tree / "main.c").write_text(MAIN_C)
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(tree, arcname="linux-source-6.1")
    return tarball


def inputs(tarball: Path, *patches: Patch) -> BuildInputs:
    return BuildInputs(
        name="honeypot",
        tarball=tarball,
        tarball_sha256="t" * 64,
        package_version="6.1.176-1",
        base_config="CONFIG_UML=y\n",
        patches=patches,
        fragment=(),
        compiler="gcc",
    )


def build(home: Layout, tarball: Path, *patches: Patch) -> tuple[str, dict[str, object]]:
    out = kbuild.cache_dir(home) / f"{inputs(tarball, *patches).key}-{next(_n)}"
    kbuild._build_into(inputs(tarball, *patches), home, out, NullProgress())
    run = subprocess.run([str(out / "linux")], capture_output=True, text=True, check=True)
    return run.stdout.strip(), json.loads((out / "meta.json").read_text())


def test_a_changed_series_rebuilds_only_what_it_changes(kcache: Layout, tiny_source: Path) -> None:
    out, meta = build(kcache, tiny_source, patch_for("a.c", "a-orig", "a-patched"))
    assert out == "a-patched b-orig"
    assert meta["incremental"] is False and meta["make_steps"] == 4  # 3 CC + LD

    # a.c goes back to pristine (its patch left the series), b.c gets one: both recompile
    out, meta = build(kcache, tiny_source, patch_for("b.c", "b-orig", "b-patched"))
    assert out == "a-orig b-patched"
    assert meta["incremental"] is True and meta["make_steps"] == 3  # a.o, b.o, LD

    # the same series again: a fresh unpack (old mtimes) and the same patched content (its
    # old mtime back): make has nothing to do
    out, meta = build(kcache, tiny_source, patch_for("b.c", "b-orig", "b-patched"))
    assert out == "a-orig b-patched" and meta["make_steps"] == 0

    # a patch whose content changes: only its file recompiles
    out, meta = build(kcache, tiny_source, patch_for("b.c", "b-orig", "b-again"))
    assert out == "a-orig b-again" and meta["make_steps"] == 2  # b.o, LD


def test_a_patch_that_does_not_apply_is_named(kcache: Layout, tiny_source: Path) -> None:
    bad = patch_for("a.c", "a-nothere", "a-new")
    with pytest.raises(
        KernelError, match=r"patch a\.c\.patch does not apply to .* \(6\.1\.176-1\)"
    ):
        kbuild._build_into(inputs(tiny_source, bad), kcache, kcache.cache / "x", NullProgress())


def test_a_compile_error_shows_the_end_of_the_log(kcache: Layout, tiny_source: Path) -> None:
    broken = Patch(
        "broken.patch",
        b"--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n"
        b'-const char *a(void) { return "a-orig"; }\n'
        b"+this is not C\n",
    )
    with pytest.raises(KernelError, match=r"make failed \(exit 2\).*build\.log"):
        kbuild._build_into(inputs(tiny_source, broken), kcache, kcache.cache / "x", NullProgress())
    assert not (kcache.cache / "x").exists()


def test_a_fragment_line_the_configuration_drops_is_named(
    kcache: Layout, tiny_source: Path
) -> None:
    wanted = inputs(tiny_source)
    wanted = BuildInputs(**{**wanted.__dict__, "fragment": (ConfigLine("CONFIG_FOO", "y"),)})
    with pytest.raises(KernelError, match=r"does not take 'CONFIG_FOO=y' \(it is 'not set'\)"):
        kbuild._build_into(wanted, kcache, kcache.cache / "x", NullProgress())


def test_the_key_follows_every_input(tiny_source: Path) -> None:
    base = inputs(tiny_source, patch_for("a.c", "a-orig", "a-1"))
    same = inputs(tiny_source, patch_for("a.c", "a-orig", "a-1"))
    assert base.key == same.key and len(base.key) == 16
    others = [
        inputs(tiny_source, patch_for("a.c", "a-orig", "a-2")),
        BuildInputs(**{**base.__dict__, "base_config": "CONFIG_UML=y\nCONFIG_X=y\n"}),
        BuildInputs(**{**base.__dict__, "fragment": (ConfigLine("CONFIG_HOSTFS", "n"),)}),
        BuildInputs(**{**base.__dict__, "tarball_sha256": "u" * 64}),
        BuildInputs(**{**base.__dict__, "compiler": "gcc 13"}),
        BuildInputs(**{**base.__dict__, "build_env": {"KBUILD_BUILD_VERSION": "2"}}),
    ]
    assert len({base.key, *(o.key for o in others)}) == len(others) + 1


def test_the_repository_series_and_fragment() -> None:
    patches = source.read_series(REPO_KERNEL)
    assert [p.name for p in patches] == [
        "0000-xstate-signal-frames.patch",
        "0001-tty-log.patch",
        "0002-proc-disguise.patch",
        "0003-cpuid-emulation.patch",
        "0004-memory-oom-plug.patch",
        "0010-uml-persona.patch",
    ]
    files = {f for p in patches for f in p.files()}
    assert {"arch/um/kernel/tty_log.c", "drivers/tty/tty_io.c", "fs/proc/disguise.c"} <= files
    assert "arch/um/kernel/persona.c" in files
    assert "arch/um/drivers/mconsole_kern.c" in set(patches[-2].files())
    assert "arch/x86/um/signal.c" in files
    fragment = source.read_fragment(REPO_KERNEL / "honeypot.config")
    assert ConfigLine("CONFIG_UML_TTY_LOG", "y") in fragment
    assert ConfigLine("CONFIG_HOSTFS", "n") in fragment
    assert ConfigLine("CONFIG_UML_PERSONA", "y") in fragment


def test_series_and_fragment_errors(tmp_path: Path) -> None:
    (tmp_path / "series").write_text("# nothing\n")
    with pytest.raises(KernelError, match="names no patches"):
        source.read_series(tmp_path)
    (tmp_path / "series").write_text("0001-x.patch\n")
    with pytest.raises(KernelError, match=r"series:1: '0001-x.patch' is not a patch file"):
        source.read_series(tmp_path)
    (tmp_path / "f.config").write_text("CONFIG_A=y\nCONFIG_B is great\n")
    with pytest.raises(KernelError, match=r"f\.config:2: 'CONFIG_B is great'"):
        source.read_fragment(tmp_path / "f.config")
    config = source.parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n')
    assert ConfigLine("CONFIG_A", "y").holds_in(config)
    assert ConfigLine("CONFIG_B", "n").holds_in(config)
    assert not ConfigLine("CONFIG_C", "y").holds_in(config)


def test_only_known_kernels_build() -> None:
    with pytest.raises(KernelError, match="no kernel named 'fancy'.*honeypot"):
        source.gather("fancy")


def test_missing_dependencies_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        kbuild,
        "BUILD_DEPENDENCIES",
        {"make": "make", "warden-no-such-tool": "warden-no-such-tool", "x-dev": "/nonexistent.h"},
    )
    assert kbuild.missing_dependencies() == ["warden-no-such-tool", "x-dev"]


def test_install_and_ls(
    kcache: Layout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = kcache
    monkeypatch.setenv("WARDEN_HOME", str(home.home))
    monkeypatch.setenv("WARDEN_CACHE", str(home.cache))
    built = home.cache / "kernels" / "0123456789abcdef"
    built.mkdir(parents=True)
    (built / "linux").write_bytes(b"\x7fELF fake")
    (built / "linux").chmod(0o755)
    meta = {"name": "honeypot", "key": "0123456789abcdef", "version": "6.1.176"}
    (built / "meta.json").write_text(json.dumps(meta))
    path = kbuild.install(home, "honeypot", built)
    assert path == home.kernels / "honeypot" / "linux" and path.read_bytes() == b"\x7fELF fake"
    # installing the same build again (every test run does) leaves no temporary link behind,
    # and sweeps the one a dead installer left
    dead = home.kernels / "honeypot" / ".linux.tmp999999999"
    os.link(built / "linux", dead)
    assert kbuild.install(home, "honeypot", built) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["linux", "meta.json"]
    [info] = kbuild.ls(home)
    assert (info.name, info.key, info.version) == ("honeypot", "0123456789abcdef", "6.1.176")
    assert cli(["kernel", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "honeypot" and listed[0]["path"] == str(path)
    assert cli(["kernel", "ls"]) == 0
    assert "honeypot" in capsys.readouterr().out


def test_cli_refuses_an_unknown_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["kernel", "build", "fancy"])
    assert "invalid choice: 'fancy'" in capsys.readouterr().err
