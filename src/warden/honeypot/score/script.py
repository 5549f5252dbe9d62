"""The shell script that runs the battery's probes in a guest, and the reader of its answers.

The script is typed on the guest's console (a root shell) as a here-document for `sh`. It runs
every probe as root and/or as an unprivileged user (`admin` if the guest has one, else
`nobody`), and prints one line per run:

    <MARK> <probe id> <root|user> <exit status> <output in hex>

MARK is "WSC" followed by a per-run nonce, put together only when the script runs, so the
console's echo of the script itself never matches, nor does a previous run's output. Outputs
are cut at 64 KiB in the guest; the host reads the whole answer under a budget
(`parse` takes only well-formed lines of known probes). Nothing is judged in the guest: a
hostile guest can only lie about its own score.

The CPUID probe is a 218-byte static x86-64 program assembled below (no compiler in guests):
it executes CPUID leaves 0, 1 and 0x40000000 and writes the 12 registers, little-endian.
"""

import re
import secrets
import shlex
import struct
from dataclasses import dataclass

from warden.errors import WardenError
from warden.honeypot.score.table import Probe, Table

OUTPUT_MAX = 65536
MARK_PREFIX = "WSC"

# CPUID leaves 0, 1, 0x40000000 into a stack buffer, write(1, buf, 48), exit(0).
_CPUID_CODE = bytes.fromhex(
    "4883ec40"  # sub rsp, 0x40
    "4989e4"  # mov r12, rsp
    "31c0" "31c9" "0fa2"  # leaf 0
    "41890424" "41895c2404" "41894c2408" "41895424" "0c"
    "b801000000" "31c9" "0fa2"  # leaf 1
    "4189442410" "41895c2414" "41894c2418" "418954241c"
    "b800000040" "31c9" "0fa2"  # leaf 0x40000000
    "4189442420" "41895c2424" "41894c2428" "418954242c"
    "b801000000" "bf01000000" "4c89e6" "ba30000000" "0f05"  # write(1, r12, 48)
    "b83c000000" "31ff" "0f05"  # exit(0)
)  # fmt: skip
_BASE = 0x400000
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def cpuid_program() -> bytes:
    """A minimal static ELF64 executable (one PT_LOAD, no sections) around _CPUID_CODE."""
    head = _EHDR.size + _PHDR.size
    total = head + len(_CPUID_CODE)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    ehdr = _EHDR.pack(ident, 2, 0x3E, 1, _BASE + head, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size,
                      1, 0, 0, 0)  # fmt: skip
    phdr = _PHDR.pack(1, 5, 0, _BASE, _BASE, total, total, 0x1000)
    return ehdr + phdr + _CPUID_CODE


def _octal(data: bytes) -> str:
    """printf(1) octal escapes: every POSIX printf (dash, busybox) understands them."""
    return "".join(f"\\{b:03o}" for b in data)


def _tcp(port: str, payload: str) -> str:
    """Talk to a local TCP port with bash's /dev/tcp: the banner, or the answer to a payload."""
    if payload == "-":
        body = f'exec 3<>/dev/tcp/127.0.0.1/{int(port)} && IFS= read -r b <&3 && echo "$b"'
    else:
        body = (
            f"exec 3<>/dev/tcp/127.0.0.1/{int(port)} && IFS= read -r b <&3 && "
            f"printf '%b' {shlex.quote(payload)} >&3 && timeout 3 cat <&3"
        )
    return f"command -v bash >/dev/null || exit 127; timeout 8 bash -c {shlex.quote(body)}"


def probe_command(probe: Probe) -> str:
    if probe.run == "@cpuid":
        return '"$D/cpuid" | od -An -v -tx1'
    if probe.run.startswith("@tcp "):
        _, port, payload = probe.run.split(" ", 2)
        return _tcp(port, payload)
    return probe.run


_FUNCTIONS = r"""
w() {
    if [ "$2" = root ]; then
        sh -c "$3" >"$D/o" 2>&1 </dev/null; rc=$?
    elif [ -z "$U" ]; then
        echo "no unprivileged user in this guest" >"$D/o"; rc=126
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$U" -- sh -c "$3" >"$D/o" 2>&1 </dev/null; rc=$?
    else
        su -s /bin/sh "$U" -c "$3" >"$D/o" 2>&1 </dev/null; rc=$?
    fi
    echo "$M $1 $2 $rc $(head -c %(max)d "$D/o" | od -An -v -tx1 | tr -d ' \n')"
}
"""


@dataclass(frozen=True)
class Script:
    nonce: str
    text: str  # what to type on the console: a here-document for sh

    @property
    def mark(self) -> str:
        return MARK_PREFIX + self.nonce


def build(table: Table, nonce: str | None = None) -> Script:
    nonce = nonce or secrets.token_hex(6)
    lines = [
        f'M={MARK_PREFIX}; M="${{M}}{nonce}"',
        "D=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d) || exit 1; export D",
        'chmod 755 "$D"',
        'U=; for u in admin nobody; do id -u "$u" >/dev/null 2>&1 && { U=$u; break; }; done',
        f'printf \'{_octal(cpuid_program())}\' > "$D/cpuid" && chmod 755 "$D/cpuid"',
        _FUNCTIONS.strip("\n") % {"max": OUTPUT_MAX},
        'echo "$M-BEGIN $U"',
    ]
    for probe in table.probes.values():
        cmd = shlex.quote(probe_command(probe))
        for who in probe.identities:
            lines.append(f"w {probe.id} {who} {cmd}")
    lines += ['rm -rf "$D"', 'echo "$M-END"']
    body = "\n".join(lines)
    # a leading space and no HISTFILE: the console shell keeps none of it in root's history
    text = f" unset HISTFILE; sh <<'WARDEN_SCORE_EOF'\n{body}\nWARDEN_SCORE_EOF\n"
    return Script(nonce, text)


# ---- the answer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    user: str  # the unprivileged user the guest ran probes as ("" if none)
    results: dict[tuple[str, str], tuple[int, str]]  # (probe, root|user) -> (status, output)
    complete: bool  # the end mark came


class ScriptError(WardenError):
    """The guest did not run the battery."""


def parse(console: bytes, script: Script, table: Table) -> Answer:
    """The probe results in what the console printed after the script was typed."""
    mark = re.escape(script.mark.encode())
    begin = re.search(rb"(?m)" + mark + rb"-BEGIN ?([a-z_][a-z0-9_-]{0,31})?\r?$", console)
    if begin is None:
        raise ScriptError(
            "the guest never started the battery: is its console at a root shell? "
            "(the Debian image logs root in on the console when no root password is set)"
        )
    user = (begin.group(1) or b"").decode()
    results: dict[tuple[str, str], tuple[int, str]] = {}
    line = re.compile(
        rb"(?m)" + mark + rb" ([a-z0-9-]{1,40}) (root|user) (\d{1,3}) ([0-9a-f]*)\r?$"
    )
    for m in line.finditer(console, begin.end()):
        probe, who = m.group(1).decode(), m.group(2).decode()
        if probe not in table.probes or len(m.group(4)) % 2:
            continue
        out = bytes.fromhex(m.group(4).decode())[:OUTPUT_MAX].decode("utf-8", "replace")
        results[(probe, who)] = (int(m.group(3)), out)
    complete = re.compile(rb"(?m)" + mark + rb"-END\r?$").search(console, begin.end()) is not None
    return Answer(user, results, complete)
