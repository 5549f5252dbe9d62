"""The battery as data: probes (what runs in the guest) and checks (what tells to look for in
their answers), read from checks.toml and checked once (a bad table is a bug: ValueError naming
the entry). `load()` is cached; `parse_table(text)` is for tests."""

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

AS_VALUES = ("root", "user", "both")
JUDGES = (
    "absent",
    "present",
    "empty",
    "equals",
    "mac",
    "cpuid",
    "latency",
    "differs",
    "min_kib",
)


@dataclass(frozen=True)
class Probe:
    id: str
    run: str
    as_: str  # root, user or both

    @property
    def identities(self) -> tuple[str, ...]:
        return ("user", "root") if self.as_ == "both" else (self.as_,)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    probe: str
    as_: str
    judge: str
    hideable: bool
    explanation: str
    source: str
    why: str = ""  # why it cannot be hidden (or when it cannot)
    missing: str = ""  # "n/a": exit status 127 makes the check not applicable
    patterns: tuple[re.Pattern[str], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def identities(self) -> tuple[str, ...]:
        return ("user", "root") if self.as_ == "both" else (self.as_,)


@dataclass(frozen=True)
class Table:
    probes: dict[str, Probe]
    checks: tuple[Check, ...]


_CHECK_KEYS = {
    "id",
    "title",
    "probe",
    "as",
    "judge",
    "hideable",
    "explanation",
    "source",
    "why",
    "missing",
    "patterns",
}


def parse_table(text: str) -> Table:
    data = tomllib.loads(text)
    probes: dict[str, Probe] = {}
    for p in data.get("probe", []):
        pid, run, as_ = p.get("id"), p.get("run"), p.get("as")
        if not isinstance(pid, str) or not isinstance(run, str) or as_ not in AS_VALUES:
            raise ValueError(f"probe {p!r}: needs id, run and as = root|user|both")
        if pid in probes:
            raise ValueError(f"probe {pid!r} twice")
        probes[pid] = Probe(pid, run, as_)
    checks = []
    seen = set()
    for c in data.get("check", []):
        cid = c.get("id")
        if not isinstance(cid, str) or cid in seen:
            raise ValueError(f"check {cid!r}: missing or repeated id")
        seen.add(cid)
        probe = probes.get(c.get("probe", ""))
        if probe is None:
            raise ValueError(f"check {cid!r}: no probe {c.get('probe')!r}")
        as_ = c.get("as")
        if as_ not in AS_VALUES or not set(("user", "root") if as_ == "both" else (as_,)) <= set(
            probe.identities
        ):
            raise ValueError(
                f"check {cid!r}: as = {as_!r} but probe {probe.id} runs as {probe.as_}"
            )
        if c.get("judge") not in JUDGES:
            raise ValueError(f"check {cid!r}: judge {c.get('judge')!r}; one of {JUDGES}")
        if not isinstance(c.get("hideable"), bool):
            raise ValueError(f"check {cid!r}: hideable = true or false")
        if not c["hideable"] and not c.get("why"):
            raise ValueError(f"check {cid!r}: hideable = false needs why")
        try:
            patterns = tuple(re.compile(p, re.M) for p in c.get("patterns", []))
        except re.error as e:
            raise ValueError(f"check {cid!r}: bad pattern: {e}") from None
        if c["judge"] in ("absent", "present") and not patterns:
            raise ValueError(f"check {cid!r}: judge {c['judge']} needs patterns")
        checks.append(
            Check(
                id=cid,
                title=c.get("title", cid),
                probe=probe.id,
                as_=as_,
                judge=c["judge"],
                hideable=c["hideable"],
                explanation=c.get("explanation", ""),
                source=c.get("source", ""),
                why=c.get("why", ""),
                missing=c.get("missing", ""),
                patterns=patterns,
                params={k: v for k, v in c.items() if k not in _CHECK_KEYS},
            )
        )
    return Table(probes, tuple(checks))


@functools.cache
def load() -> Table:
    text = resources.files("warden.honeypot.score").joinpath("checks.toml").read_text()
    return parse_table(text)
