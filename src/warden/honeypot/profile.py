"""Disguise profiles: TOML files saying what a honeypot guest may see (docs/formats/disguise.md).

`load_profile(name_or_path)` reads and checks a whole profile before anything is sent to a
kernel, and raises DisguiseError naming the file, the key and the value at fault. A Profile
becomes the kernel's rule set (`Profile.ruleset()`), and answers the kernel's filter
requests (`Profile.filter_content`), which may run a host program (`FilterSpec.command`).
"""

import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from warden.errors import WardenError
from warden.honeypot.disguise_wire import (
    KMSG_TEXT_MAX,
    MATCH_MAX,
    PATH_MAX,
    RULES_MAX,
    TEXT_MAX,
    TIMEOUT_MAX_MS,
    Action,
    DisguiseProtocolError,
    Entry,
    Fallback,
    KmsgAction,
    KmsgRule,
    Ruleset,
    encode_ruleset,
)

DEFAULT_TIMEOUT_MS = 200
PID_PATHS = ("[pid]/mounts", "[pid]/mountinfo")  # per-process files: replace/filter only
_PATH = re.compile(r"^[A-Za-z0-9_.+\-:@]+(/[A-Za-z0-9_.+\-:@]+)*$")


class DisguiseError(WardenError):
    """A disguise profile (or a value in it) is wrong."""


@dataclass(frozen=True)
class FilterSpec:
    drop: tuple[re.Pattern[str], ...] = ()
    sub: tuple[tuple[re.Pattern[str], str], ...] = ()
    command: tuple[str, ...] = ()

    def apply_lines(self, text: str) -> str:
        """`drop`, then `sub`, line by line (line ends kept)."""
        out = []
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\n")
            if any(rx.search(body) for rx in self.drop):
                continue
            for rx, repl in self.sub:
                body = rx.sub(repl, body)
            out.append(body + line[len(line.rstrip("\n")) :])
        return "".join(out)


@dataclass(frozen=True)
class ProcRule:
    path: str
    action: Action
    text: bytes = b""  # replace: the content; filter with Fallback.TEXT: the fallback
    filter: FilterSpec | None = None
    fallback: Fallback = Fallback.REAL
    timeout_ms: int = 0


@dataclass(frozen=True)
class Profile:
    name: str
    source: str  # the file it came from
    description: str = ""
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    cpuid_hide_hypervisor: bool = False
    proc: tuple[ProcRule, ...] = ()
    kmsg: tuple[KmsgRule, ...] = field(default_factory=tuple)

    def rule(self, path: str) -> ProcRule | None:
        return next((r for r in self.proc if r.path == path), None)

    def ruleset(self) -> Ruleset:
        return Ruleset(
            entries=tuple(
                Entry(r.action, r.path, r.text, r.fallback, r.timeout_ms) for r in self.proc
            ),
            kmsg=self.kmsg,
            timeout_ms=self.timeout_ms,
            cpuid_hide_hypervisor=self.cpuid_hide_hypervisor,
        )

    def timeout_of(self, rule: ProcRule) -> float:
        return (rule.timeout_ms or self.timeout_ms) / 1000

    def with_cmdline(self, cmdline: str) -> "Profile":
        """This profile with `cmdline` wherever it replaces the command line (/proc/cmdline and
        the boot log's "Kernel command line:"), so a machine's persona (warden.persona) and its
        disguise tell the same story."""
        proc = tuple(
            replace(r, text=(cmdline + "\n").encode())
            if r.path == "cmdline" and r.action is Action.REPLACE
            else r
            for r in self.proc
        )
        line = f"Kernel command line: {cmdline}".encode()[:KMSG_TEXT_MAX]
        kmsg = tuple(
            KmsgRule(k.action, k.match, line)
            if k.action is KmsgAction.REPLACE and k.match.startswith(b"Kernel command line")
            else k
            for k in self.kmsg
        )
        return replace(self, proc=proc, kmsg=kmsg)


# ---- generators: content made on the host when the profile loads ------------------------


def host_cpuinfo(
    cpus: int = 1,
    drop_flags: tuple[str, ...] = ("hypervisor",),
    set_fields: dict[str, str] | None = None,
    source: Path = Path("/proc/cpuinfo"),
) -> str:
    """The host's first CPU, as /proc/cpuinfo of a `cpus`-CPU machine would show it."""
    text = source.read_text()
    first = text.split("\n\n", 1)[0]
    fields: list[tuple[str, str, str]] = []  # (the line up to its colon, key, value)
    for line in first.splitlines():
        head, sep, value = line.partition(":")
        if sep:
            fields.append((head + sep, head.rstrip("\t "), value.strip()))
    if not any(k == "vendor_id" for _, k, _ in fields):
        raise DisguiseError(f"{source}: no vendor_id in the first CPU's block")
    overrides = dict(set_fields or {})
    blocks = []
    for n in range(cpus):
        lines = []
        for head, key, value in fields:
            if key in ("processor", "core id", "apicid", "initial apicid"):
                value = str(n)
            elif key in ("siblings", "cpu cores"):
                value = str(cpus)
            elif key == "flags":
                value = " ".join(f for f in value.split() if f not in drop_flags)
            value = overrides.get(key, value)
            lines.append(f"{head} {value}" if value else head)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks) + "\n"


# ---- loading ---------------------------------------------------------------------------


class _Where:
    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, problem: str) -> DisguiseError:
        return DisguiseError(f"{self.source}: {where}: {problem}")


def _int(w: _Where, where: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise w.error(where, f"{v!r}: expected a whole number from {lo} to {hi}")
    return v


def _text(w: _Where, where: str, v: Any, limit: int) -> bytes:
    if not isinstance(v, str):
        raise w.error(where, f"{v!r}: expected a string")
    raw = v.encode()
    if len(raw) > limit:
        raise w.error(where, f"text of {len(raw)} bytes: at most {limit}")
    return raw


def _regex(w: _Where, where: str, v: Any) -> re.Pattern[str]:
    if not isinstance(v, str):
        raise w.error(where, f"{v!r}: expected a regular expression (a string)")
    try:
        return re.compile(v)
    except re.error as e:
        raise w.error(where, f"{v!r} is not a valid regular expression: {e}") from None


def _keys(w: _Where, where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise w.error(where, f"unknown key {extra[0]!r}; allowed: {', '.join(allowed)}")


def _generate(w: _Where, where: str, spec: dict[str, Any]) -> bytes:
    _keys(w, where, spec, ("generator", "cpus", "drop_flags", "set"))
    gen = spec.get("generator")
    if gen != "host-cpuinfo":
        raise w.error(f"{where}.generator", f"{gen!r}: the generators are 'host-cpuinfo'")
    cpus = _int(w, f"{where}.cpus", spec.get("cpus", 1), 1, 256)
    drop = spec.get("drop_flags", ["hypervisor"])
    if not isinstance(drop, list) or not all(isinstance(f, str) for f in drop):
        raise w.error(f"{where}.drop_flags", f"{drop!r}: expected a list of flag names")
    sets = spec.get("set", {})
    if not isinstance(sets, dict) or not all(isinstance(v, str) for v in sets.values()):
        raise w.error(f"{where}.set", f"{sets!r}: expected a table of strings")
    try:
        text = host_cpuinfo(cpus, tuple(drop), sets)
    except OSError as e:
        raise w.error(where, f"the host's /proc/cpuinfo: {e}") from None
    raw = text.encode()
    if len(raw) > TEXT_MAX:
        raise w.error(where, f"generated {len(raw)} bytes: at most {TEXT_MAX}")
    return raw


def _check_path(w: _Where, path: str) -> None:
    raw = path.encode("ascii", "replace")
    if not 1 <= len(raw) <= PATH_MAX or not path.isascii():
        raise w.error(f"proc.{path!r}", f"expected a path of 1..{PATH_MAX} ASCII characters")
    if path in PID_PATHS:
        return
    if path.startswith("/") or ".." in path.split("/") or not _PATH.match(path):
        raise w.error(
            f"proc.{path!r}",
            "expected a path below /proc without a leading '/' or '..' (e.g. cpuinfo, "
            f"net/dev), or one of {', '.join(PID_PATHS)}",
        )
    if path.split("/")[0].isdigit() or path.split("/")[0] in ("self", "thread-self", "sys"):
        raise w.error(
            f"proc.{path!r}",
            "per-process files and /proc/sys are not covered; for mounts use "
            f"{' or '.join(PID_PATHS)}",
        )


def _proc_rule(w: _Where, path: str, table: Any) -> ProcRule:
    where = f"proc.{path!r}" if "/" in path or "[" in path else f"proc.{path}"
    if not isinstance(table, dict):
        raise w.error(where, "expected a table (hide = true, replace = ... or filter = {...})")
    _check_path(w, path)
    _keys(w, where, table, ("hide", "replace", "filter", "fallback", "timeout_ms"))
    actions = [k for k in ("hide", "replace", "filter") if k in table]
    if len(actions) != 1:
        raise w.error(where, "needs exactly one of hide = true, replace, filter")
    kind = actions[0]
    if kind != "filter":
        for k in ("fallback", "timeout_ms"):
            if k in table:
                raise w.error(f"{where}.{k}", "applies to filters only")
    if kind == "hide":
        if table["hide"] is not True:
            raise w.error(f"{where}.hide", f"{table['hide']!r}: the only value is true")
        if path in PID_PATHS:
            raise w.error(f"{where}.hide", f"{path} can be replaced or filtered, not hidden")
        return ProcRule(path, Action.HIDE)
    if kind == "replace":
        v = table["replace"]
        text = _generate(w, f"{where}.replace", v) if isinstance(v, dict) else None
        if text is None:
            text = _text(w, f"{where}.replace", v, TEXT_MAX)
        return ProcRule(path, Action.REPLACE, text)
    spec = table["filter"]
    if not isinstance(spec, dict):
        raise w.error(f"{where}.filter", "expected a table with drop, sub and/or command")
    _keys(w, f"{where}.filter", spec, ("drop", "sub", "command"))
    drop = spec.get("drop", [])
    if not isinstance(drop, list):
        raise w.error(f"{where}.filter.drop", "expected a list of regular expressions")
    subs = spec.get("sub", [])
    if not isinstance(subs, list):
        raise w.error(f"{where}.filter.sub", 'expected a list of ["regex", "replacement"]')
    pairs = []
    for i, pair in enumerate(subs):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
            raise w.error(
                f"{where}.filter.sub[{i}]", f'{pair!r}: expected ["regex", "replacement"]'
            )
        pairs.append((_regex(w, f"{where}.filter.sub[{i}]", pair[0]), pair[1]))
    command = spec.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, str) and c for c in command):
        raise w.error(f"{where}.filter.command", f"{command!r}: expected a list like [prog, arg]")
    if command and not command[0].startswith("/"):
        raise w.error(f"{where}.filter.command", f"{command[0]!r}: give the program's full path")
    filt = FilterSpec(
        tuple(_regex(w, f"{where}.filter.drop[{i}]", d) for i, d in enumerate(drop)),
        tuple(pairs),
        tuple(command),
    )
    fallback, text = Fallback.REAL, b""
    fb = table.get("fallback", "real")
    if fb == "real":
        pass
    elif fb == "empty":
        fallback = Fallback.EMPTY
    elif isinstance(fb, dict) and set(fb) == {"text"}:
        fallback, text = Fallback.TEXT, _text(w, f"{where}.fallback.text", fb["text"], TEXT_MAX)
    else:
        raise w.error(
            f"{where}.fallback", f'{fb!r}: expected "real", "empty" or {{ text = "..." }}'
        )
    timeout = _int(w, f"{where}.timeout_ms", table.get("timeout_ms", 0), 0, TIMEOUT_MAX_MS)
    return ProcRule(path, Action.FILTER, text, filt, fallback, timeout)


def _kmsg_rule(w: _Where, i: int, table: Any) -> KmsgRule:
    where = f"kmsg[{i}]"
    if not isinstance(table, dict):
        raise w.error(where, 'expected a table like { match = "...", hide = true }')
    _keys(w, where, table, ("match", "hide", "replace"))
    match = _text(w, f"{where}.match", table.get("match"), MATCH_MAX)
    if not match:
        raise w.error(f"{where}.match", "must not be empty")
    if "replace" in table:
        if "hide" in table:
            raise w.error(where, "has both hide and replace")
        return KmsgRule(
            KmsgAction.REPLACE, match, _text(w, f"{where}.replace", table["replace"], KMSG_TEXT_MAX)
        )
    if table.get("hide", True) is not True:
        raise w.error(f"{where}.hide", f"{table['hide']!r}: the only value is true")
    return KmsgRule(KmsgAction.HIDE, match)


def parse_profile(text: str, name: str, source: str) -> Profile:
    w = _Where(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DisguiseError(f"{source}: not valid TOML: {e}") from None
    _keys(w, "top level", data, ("profile", "proc", "kmsg"))
    head = data.get("profile", {})
    if not isinstance(head, dict):
        raise w.error("profile", "expected a table")
    _keys(w, "profile", head, ("description", "timeout_ms", "cpuid_hide_hypervisor"))
    description = head.get("description", "")
    if not isinstance(description, str):
        raise w.error("profile.description", "expected a string")
    timeout = _int(
        w, "profile.timeout_ms", head.get("timeout_ms", DEFAULT_TIMEOUT_MS), 1, TIMEOUT_MAX_MS
    )
    cpuid = head.get("cpuid_hide_hypervisor", False)
    if not isinstance(cpuid, bool):
        raise w.error("profile.cpuid_hide_hypervisor", f"{cpuid!r}: expected true or false")
    procs = data.get("proc", {})
    if not isinstance(procs, dict):
        raise w.error("proc", "expected tables like [proc.cpuinfo]")
    rules = [_proc_rule(w, path, table) for path, table in procs.items()]
    kmsg_list = data.get("kmsg", [])
    if not isinstance(kmsg_list, list):
        raise w.error("kmsg", "expected [[kmsg]] tables")
    kmsg = [_kmsg_rule(w, i, t) for i, t in enumerate(kmsg_list)]
    if len(rules) > RULES_MAX or len(kmsg) > RULES_MAX:
        raise w.error("top level", f"at most {RULES_MAX} proc entries and {RULES_MAX} kmsg rules")
    profile = Profile(name, source, description, timeout, cpuid, tuple(rules), tuple(kmsg))
    try:
        encode_ruleset(profile.ruleset())  # the format's own limits (total size)
    except DisguiseProtocolError as e:
        raise DisguiseError(f"{source}: {e}") from None
    return profile


def builtin_profiles() -> list[str]:
    folder = resources.files("warden.honeypot").joinpath("profiles")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(ref: str | Path) -> Profile:
    """A shipped profile by name (`baremetal`) or a profile file by path."""
    text: str
    if isinstance(ref, Path) or "/" in ref or ref.endswith(".toml"):
        path = Path(ref)
        try:
            text = path.read_text()
        except OSError as e:
            raise DisguiseError(f"disguise profile {path}: {e.strerror}") from None
        return parse_profile(text, path.stem, str(path))
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", ref) or ref not in builtin_profiles():
        raise DisguiseError(
            f"no disguise profile named {ref!r}; warden ships: "
            f"{', '.join(builtin_profiles())} (or give the path of a .toml file)"
        )
    res = resources.files("warden.honeypot").joinpath("profiles", f"{ref}.toml")
    return parse_profile(res.read_text(), ref, f"profiles/{ref}.toml")
