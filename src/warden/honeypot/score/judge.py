"""Judging the battery's answers (pure: recorded outputs in, a report out).

Each check of the table is judged once per identity it names (root, user) as `pass` (nothing
found), `tell` (what gives the guest away, with the evidence), `n/a` (the probe's program is not
installed and the check allows that) or `error` (the probe never answered). The host's side
(its own system call cost, whether its CPU can fault on CPUID) comes in as `HostFacts`.
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from warden.honeypot.score.table import Check, Table

EVIDENCE_LINES = 6
EVIDENCE_CHARS = 200

# OUIs of virtual NICs (IEEE registrations of the hypervisor vendors, and the defaults of
# QEMU, libvirt, Xen, OpenStack and cloud platforms).
VIRTUAL_OUIS = {
    "52:54:00": "QEMU/KVM",
    "00:0c:29": "VMware",
    "00:50:56": "VMware",
    "00:05:69": "VMware",
    "00:1c:14": "VMware",
    "08:00:27": "VirtualBox",
    "0a:00:27": "VirtualBox host-only",
    "00:16:3e": "Xen",
    "00:15:5d": "Hyper-V",
    "00:03:ff": "Microsoft Virtual PC",
    "00:1c:42": "Parallels",
    "fa:16:3e": "OpenStack",
    "42:01:0a": "Google Cloud",
    "06:00:00": "AWS (locally administered)",
}


@dataclass(frozen=True)
class HostFacts:
    ns_per_syscall: float | None = None  # the host's dd: nanoseconds per read/write
    cpuid_faulting: bool | None = None


@dataclass
class Verdict:
    id: str
    title: str
    identity: str  # root or user
    verdict: str  # pass, tell, n/a, error
    hideable: bool
    evidence: list[str] = field(default_factory=list)
    why_not_hideable: str = ""
    explanation: str = ""
    source: str = ""


@dataclass
class Report:
    verdicts: list[Verdict]
    user: str = ""
    complete: bool = True
    answers: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        tells = [v for v in self.verdicts if v.verdict == "tell"]
        hidden = [v for v in tells if v.hideable]
        return {
            "checks": len(self.verdicts),
            "passed": sum(v.verdict == "pass" for v in self.verdicts),
            "tells": len(tells),
            "hideable_tells": len(hidden),
            "not_applicable": sum(v.verdict == "n/a" for v in self.verdicts),
            "errors": sum(v.verdict == "error" for v in self.verdicts),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "complete": self.complete,
            "summary": self.summary(),
            "checks": [asdict(v) for v in self.verdicts],
        }


def _clip(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= EVIDENCE_CHARS else line[: EVIDENCE_CHARS - 1] + "…"


def _absent(check: Check, out: str) -> list[str]:
    hits = []
    for line in out.splitlines():
        if any(rx.search(line) for rx in check.patterns):
            hits.append(_clip(line))
            if len(hits) >= EVIDENCE_LINES:
                break
    return hits


def _present(check: Check, out: str) -> list[str]:
    missing = [rx.pattern for rx in check.patterns if not rx.search(out)]
    if not missing:
        return []
    shown = [_clip(x) for x in out.splitlines()[:3]] or ["(no output)"]
    return [f"expected /{p}/" for p in missing] + shown


def _mac(out: str) -> list[str]:
    found = []
    for line in out.splitlines():
        m = re.match(r"^(\S+)\s+([0-9a-f]{2}(?::[0-9a-f]{2}){5})$", line.strip().lower())
        if not m:
            continue
        name, mac = m.groups()
        first = int(mac[:2], 16)
        if mac[:8] in VIRTUAL_OUIS:
            found.append(f"{name} {mac}: {VIRTUAL_OUIS[mac[:8]]}'s OUI")
        elif first & 0x02:
            found.append(f"{name} {mac}: locally administered (not a vendor's OUI)")
        elif first & 0x01:
            found.append(f"{name} {mac}: a multicast address")
    if not found and not re.search(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", out.lower()):
        found.append("no NIC found")
    return found


def cpuid_registers(out: str) -> list[int] | None:
    """The 12 registers the CPUID program wrote, from its hex output (od -tx1)."""
    digits = re.sub(r"[^0-9a-f]", "", out.lower())
    if len(digits) != 96:
        return None
    raw = bytes.fromhex(digits)
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 48, 4)]


def _cpuid(out: str, cpuinfo: str | None, host: HostFacts) -> list[str]:
    regs = cpuid_registers(out)
    if regs is None:
        return [f"the CPUID program printed no registers: {_clip(out) or '(nothing)'}"]
    tells = []
    ecx1 = regs[6]
    hv_bit = bool(ecx1 >> 31 & 1)
    sig = b"".join(r.to_bytes(4, "little") for r in regs[9:12]).rstrip(b"\0")
    if hv_bit:
        tells.append("CPUID leaf 1 ECX bit 31 (hypervisor) is set")
    if sig and sig.isascii() and any(32 < c < 127 for c in sig):
        tells.append(f"CPUID leaf 0x40000000 signature {sig.decode('ascii', 'replace')!r}")
    if cpuinfo is not None:
        claims = bool(re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M))
        if hv_bit and not claims:
            tells.append("/proc/cpuinfo claims no hypervisor flag: CPUID contradicts it")
    if tells and host.cpuid_faulting is False:
        tells.append("(the host CPU cannot fault on CPUID: not hideable on this host)")
    return tells


def _dd_seconds(out: str) -> tuple[int, float] | None:
    """(bytes, seconds) from dd's summary (coreutils: '..., 0.12 s, ...'; busybox: 'seconds')."""
    m = re.search(r"(\d+) bytes\b.*?copied, ([0-9.]+) s", out)
    if not m:
        return None
    return int(m.group(1)), float(m.group(2))


def ns_per_syscall(dd_output: str) -> float | None:
    """Nanoseconds a system call, from dd's own timing, or (busybox's dd prints none) from
    the probe's two /proc/uptime readings around a dd of 1-byte records."""
    got = _dd_seconds(dd_output)
    if got is None:
        records = re.search(r"^(\d+)\+0 records out", dd_output, re.M)
        up = re.search(r"^uptime ([0-9.]+) ([0-9.]+)$", dd_output, re.M)
        if records and up:
            got = int(records.group(1)), float(up.group(2)) - float(up.group(1))
    if got is None or got[0] == 0 or got[1] <= 0:
        return None
    count, seconds = got
    return seconds * 1e9 / (2 * count)  # a read and a write per byte


def _latency(check: Check, out: str, host: HostFacts) -> list[str]:
    guest = ns_per_syscall(out)
    if guest is None:
        return [f"no dd timing in: {_clip(out) or '(nothing)'}"]
    if not host.ns_per_syscall:
        return [] if guest < 1000 else [f"{guest:.0f} ns a system call (no host figure)"]
    ratio = guest / host.ns_per_syscall
    limit = float(check.params.get("max_ratio", 5.0))
    if ratio <= limit:
        return []
    return [f"{guest:.0f} ns a system call against the host's {host.ns_per_syscall:.0f} ns: "
            f"{ratio:.1f}x (more than {limit:g}x)"]  # fmt: skip


def _differs(check: Check, out: str) -> list[str]:
    sep = str(check.params.get("separator", "--"))
    if sep not in out:
        return [f"no second answer: {_clip(out)}"]
    first, second = out.split(sep, 1)
    if first.strip() and first.strip() == second.strip():
        return ["the same output twice: " + _clip(first.strip().splitlines()[-1])]
    return []


def _min_kib(check: Check, out: str) -> list[str]:
    name = str(check.params.get("field", "MemTotal"))
    m = re.search(rf"^{re.escape(name)}:\s+(\d+) kB", out, re.M)
    if not m:
        return [f"no {name} in: {_clip(out)}"]
    value, floor = int(m.group(1)), int(check.params.get("value", 0))
    return [] if value >= floor else [f"{name} {value} kB: less than {floor} kB"]


def judge_one(
    check: Check,
    identity: str,
    result: tuple[int, str] | None,
    results: dict[tuple[str, str], tuple[int, str]],
    host: HostFacts,
) -> Verdict:
    v = Verdict(check.id, check.title, identity, "pass", check.hideable,
                why_not_hideable=check.why, explanation=check.explanation,
                source=check.source)  # fmt: skip
    if result is None:
        v.verdict, v.evidence = "error", ["the probe did not answer"]
        return v
    rc, out = result
    if rc == 127 and check.missing == "n/a":
        v.verdict, v.evidence = (
            "n/a",
            [_clip(out.strip().splitlines()[-1] if out.strip() else "not found")],
        )
        return v
    j = check.judge
    if j == "absent":
        found = _absent(check, out)
    elif j == "present":
        found = _present(check, out)
    elif j == "empty":
        found = [_clip(x) for x in out.strip().splitlines()[:EVIDENCE_LINES]]
    elif j == "equals":
        value = str(check.params.get("value", ""))
        found = (
            [] if out.strip() == value else [f"{_clip(out.strip()) or '(nothing)'} (not {value!r})"]
        )
    elif j == "mac":
        found = _mac(out)
    elif j == "cpuid":
        with_ = results.get((str(check.params.get("with", "cpuinfo")), identity))
        found = _cpuid(out, with_[1] if with_ else None, host)
    elif j == "latency":
        found = _latency(check, out, host)
    elif j == "differs":
        found = _differs(check, out)
    elif j == "min_kib":
        found = _min_kib(check, out)
    else:  # the table's loader allows only the judges above
        raise ValueError(f"unknown judge {j!r}")
    if found:
        v.verdict, v.evidence = "tell", found
    return v


def judge(
    table: Table,
    results: dict[tuple[str, str], tuple[int, str]],
    host: HostFacts,
    user: str = "",
    complete: bool = True,
) -> Report:
    verdicts = []
    for check in table.checks:
        for identity in check.identities:
            verdicts.append(
                judge_one(check, identity, results.get((check.probe, identity)), results, host)
            )
    return Report(verdicts, user, complete, results)
