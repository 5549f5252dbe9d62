"""Honeypot settings of a fleet, checked before anything boots.

`check_machine` is called for every machine with `tty_log` or `disguise` when a fleet is
applied (the daemon refuses the whole fleet on the first problem; nothing changes) and again
before each boot (files may have changed since). It names the file, the machine, the key and
the value, and says what would be right.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from warden.errors import KernelError, SpecError
from warden.honeypot.profile import DisguiseError, Profile, load_profile
from warden.paths import Layout
from warden.spec.fleet import Fleet, Machine
from warden.uml import kernel as ukernel

# The kernel's host-only boot parameters (kernel/0001-tty-log.patch, 0002-proc-disguise.patch):
# their __uml_setup strings are in any kernel that has the patches, stripped or not.
PARAMETERS = {"tty_log": b"tty_log_fd=", "disguise": b"disguise_fd="}
# kernel/0010-uml-persona.patch: the machine a disguised guest shows (warden.persona)
KNOWN = {**PARAMETERS, "persona": b"persona_fd="}
NO_DISGUISE = Profile(name="none", source="(no disguise)")


def wants_honeypot(spec: Machine) -> bool:
    return spec.tty_log or bool(spec.disguise)


def profile_ref(spec: Machine, fleet: Fleet) -> str:
    """A profile name as it is, or a path made absolute against the fleet file's folder."""
    ref = spec.disguise
    if not ref or not ("/" in ref or ref.endswith(".toml")) or os.path.isabs(ref):
        return ref
    src = Path(fleet.source)
    base = src.parent if src.name.endswith(".toml") else Path.cwd()
    return str((base / ref).absolute())


@dataclass(frozen=True)
class _Seen:
    path: str
    ino: int
    size: int
    mtime_ns: int


_supported: dict[_Seen, frozenset[str]] = {}


def kernel_parameters(path: Path) -> frozenset[str]:
    """Which honeypot parameters the kernel binary at `path` knows (read once per file)."""
    st = path.stat()
    seen = _Seen(str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if seen not in _supported:
        found: set[str] = set()
        tail = b""
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                data = tail + block
                found.update(k for k, v in KNOWN.items() if v in data)
                tail = data[-32:]
        _supported[seen] = frozenset(found)
    return _supported[seen]


def check_machine(spec: Machine, fleet: Fleet, layout: Layout) -> Profile | None:
    """SpecError unless `spec`'s honeypot settings can work; its disguise profile, if any."""
    where = f"{fleet.source}: machine {spec.name!r}"
    wanted = [k for k in PARAMETERS if getattr(spec, k)]
    if not spec.jail:
        raise SpecError(
            f"{where}: {' and '.join(wanted)} need jail = true: without a jail a guest reboot "
            "re-executes the kernel in place, which closes the tty log and disguise channels "
            "(the kernel marks them close-on-exec) and leaves their fd numbers free for other "
            "files; remove `jail = false`"
        )
    if spec.tty_log and not fleet.logs.enabled:
        raise SpecError(
            f"{where}: tty_log = true, but [logs] enabled = false: the tty log is kept with "
            "the session logs; enable them or set tty_log = false"
        )
    try:
        k = ukernel.resolve(layout, spec.kernel)
    except KernelError as e:
        raise SpecError(f"{where}: kernel = {spec.kernel!r}: {e}") from None
    try:
        known = kernel_parameters(k.path)
    except OSError as e:
        raise SpecError(f"{where}: kernel {k.path}: {e.strerror}") from None
    missing = [w for w in wanted if w not in known]
    if missing:
        raise SpecError(
            f"{where}: {' and '.join(f'{m} = ...' for m in missing)} needs a kernel with the "
            f"honeypot patches, but {k.path} (kernel = {spec.kernel!r}) has no "
            f"{' or '.join(PARAMETERS[m].decode() for m in missing)} parameter: "
            'use kernel = "honeypot" (`warden kernel build honeypot`)'
        )
    if not spec.disguise:
        return None
    try:
        return load_profile(profile_ref(spec, fleet))
    except DisguiseError as e:
        raise SpecError(f"{where}: disguise = {spec.disguise!r}: {e}") from None
