"""`warden logs verify`: each part's own chain, held to what the manifest noted about it.

docs/formats/session-log.md, "Manifest" and "Verification statuses". `reconcile` is pure: one
part's verdict from its chain and the manifest's newest entry about it. `verify_dir` walks one
logs directory: every part present, every part the manifest names or the numbering implies,
and the manifest itself.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from warden.sessionlog import codec as sl
from warden.sessionlog import manifest as mf
from warden.sessionlog import store as logstore


@dataclass(frozen=True)
class Checked:
    """One row of `warden logs verify`: a part (present or missing) or a manifest."""

    machine: str
    line: str | None
    boot: int | None
    part: int | None
    archived: bool
    path: Path
    verdict: sl.Verdict

    @property
    def label(self) -> str:
        a = " (archived)" if self.archived else ""
        if self.line is None:
            return f"{self.machine} manifest{a}"
        p = f" part {self.part}" if self.part and self.part > 1 else ""
        return f"{self.machine} {self.line} boot {self.boot}{p}{a}"


def _when(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us / 1e6)) if us else "?"


def reconcile(v: sl.Verdict, notes: mf.PartNotes | None, manifest_found: bool) -> sl.Verdict:
    """Hold one part's verdict (from its chain alone) to the manifest's newest entry on it."""
    if v.status in ("tampered", "wrong-key"):
        return v
    if notes is None:
        if not v.noted:
            return v  # written before manifests existed: the chain is all there is
        if v.last_seq == 1 and v.last_kind == "open" and v.status == "cut":
            # The writer links a part whole (header and `open`) and notes it right after: a
            # daemon killed in between leaves this. It vouches for nothing, so a planted one
            # would claim nothing either.
            return replace(
                v,
                message="the daemon stopped while opening this part, before the manifest noted "
                "it: it holds only its opening",
            )
        why = (
            f"but {mf.FILE} is not there (deleted?)"
            if not manifest_found
            else f"but {mf.FILE} has no entry for it (the manifest was cut or replaced, or the "
            "file was put here)"
        )
        return replace(v, status="missing", message=f"its header says {mf.FILE} notes it, {why}")
    if notes.mac0 and notes.mac0 != v.mac0:
        return replace(
            v,
            status="tampered",
            message=f"this is not the file the manifest noted when the part was opened at "
            f"{_when(notes.opened_us)} (its header MAC differs): the part was replaced",
            bad_seq=0,
        )
    kind = notes.kind
    e = notes.last
    if kind in ("end", "detach"):
        seq, mac = int(e.get("seq", 0)), str(e.get("mac", ""))
        said = f"the manifest says a daemon {'ended' if kind == 'end' else 'left'} this part at "
        said += f"{_when(int(e.get('t', 0)))} with record {seq}"
        if v.last_seq < seq:
            return replace(
                v,
                status="cut",
                message=f"{said}; the file stops after record {v.last_seq}: records "
                f"{v.last_seq + 1}..{seq} were cut off",
                bad_seq=v.last_seq + 1,
            )
        if v.last_seq > seq:
            if kind == "detach":
                # Continued since: its `resume` entry is past the end of a cut manifest, or
                # could not be written. The chain still vouches for every record.
                return v
            return replace(
                v,
                status="tampered",
                message=f"{said}; the file goes on to record {v.last_seq}: records were "
                "appended after it was closed",
                bad_seq=seq + 1,
            )
        if mac != v.last_mac:
            return replace(
                v,
                status="tampered",
                message=f"{said}; the file's record {seq} is not that record (its MAC differs)",
                bad_seq=seq,
            )
        return v
    if kind == "resume":
        frm = int(e.get("from_seq", 0))
        if v.status == "suspended" and v.last_seq <= frm:
            return replace(
                v,
                status="cut",
                message=f"the file ends with the daemon-detach of record {v.last_seq}, but a "
                f"daemon continued this part after record {frm} at {_when(int(e.get('t', 0)))} "
                "(manifest): what it wrote was cut off",
                bad_seq=v.last_seq + 1,
            )
    return v


def verify_dir(
    machine: str,
    directory: Path,
    archived: bool,
    key: bytes,
    live: Callable[[logstore.LogRef], bool],
    line: str | None = None,
    boot: int | None = None,
) -> list[Checked]:
    """Every part of one logs directory (filtered by line and boot), the parts it misses,
    and its manifest."""
    mpath = directory / mf.FILE
    man = mf.read(mpath, key)
    out: list[Checked] = []
    if man is not None and man.problems and line is None and boot is None:
        v = sl.Verdict("tampered", man.entries, "; ".join(man.problems[:3]), man.bad_n)
        out.append(Checked(machine, None, None, None, archived, mpath, v))
    refs = [
        r
        for r in logstore.logs_in(machine, directory, archived)
        if (line is None or r.line == line) and (boot is None or r.boot == boot)
    ]
    present = {(r.line, r.boot, r.part) for r in refs}
    for ref in refs:
        notes = man.parts.get((ref.line, ref.boot, ref.part)) if man is not None else None
        v = sl.verify(ref.path, key, live=live(ref))
        v = reconcile(v, notes, man is not None)
        out.append(Checked(machine, ref.line, ref.boot, ref.part, archived, ref.path, v))
    expected: dict[mf.PartKey, str] = {}
    if man is not None:
        for pk, notes in man.parts.items():
            if (line is None or pk[0] == line) and (boot is None or pk[1] == boot):
                what = f"opened at {_when(notes.opened_us)}" if notes.opened_us else "noted"
                if notes.kind in ("end", "detach"):
                    what += f", last record {notes.last.get('seq')} ({notes.kind})"
                expected[pk] = f"the manifest says this part was {what}; the file is gone"
    for ln, bt, part in present | set(expected):
        for earlier in range(1, part):
            pk = (ln, bt, earlier)
            if pk not in present and pk not in expected:
                expected[pk] = f"part {part} of this boot exists, so this part did: it is gone"
    for pk in sorted(set(expected) - present):
        ln, bt, part = pk
        v = sl.Verdict("missing", 0, expected[pk], 1)
        path = directory / logstore.log_name(ln, bt, part)
        out.append(Checked(machine, ln, bt, part, archived, path, v))
    return out
