"""The session logs and the memory history of one guest, for its pages (blocking: the server
runs these in an executor). They read WARDEN_HOME's files as `warden logs` and `warden mem
plot` do, and answer in JSON for the browser.

- `listing`: one row per (line, boot), its parts summed; archived logs (of a destroyed guest
  of the same name) only for administrators, who may see every guest that ever was.
- `cast`: asciicast v2 of one boot's log of a line (warden.sessionlog.export, input left out),
  which asciinema-player plays; its time 0 is the boot's first record, as in `warden replay`.
- `search`: where a string was typed or printed, with the `offset` the player seeks to (the
  offset `warden logs search` prints).
- `memory`: plugged and used memory over time from the balancer's log, thinned to POINTS.
"""

import time
from pathlib import Path
from typing import Any

from warden.errors import NotFound, SpecError, WardenError
from warden.memory import plot
from warden.memory.record import memory_dir
from warden.paths import Layout
from warden.sessionlog import export
from warden.sessionlog import search as searchmod
from warden.sessionlog import store as logstore

MAX_HITS = 200
MAX_NEEDLE = 256
CONTEXT = 40
POINTS = 720
MAX_SINCE = 7 * 86400


def listing(layout: Layout, machine: str, archived: bool) -> list[dict[str, Any]]:
    rows: dict[tuple[bool, str, int], dict[str, Any]] = {}
    for ref in logstore.find(layout, machine, archived=archived):
        try:
            st = ref.path.stat()
        except FileNotFoundError:
            continue
        row = rows.setdefault(
            (ref.archived, ref.line, ref.boot),
            {
                "line": ref.line,
                "boot": ref.boot,
                "archived": ref.archived,
                "parts": 0,
                "bytes": 0,
                "modified": 0.0,
                "state": "closed",
            },
        )
        row["parts"] += 1
        row["bytes"] += st.st_size
        row["modified"] = max(row["modified"], st.st_mtime)
        if ref.is_live():
            row["state"] = "live"
        elif not ref.compressed and row["state"] != "live":
            row["state"] = "open"
    return sorted(rows.values(), key=lambda r: (-r["modified"], r["line"]))


def cast(layout: Layout, machine: str, line: str, boot: int) -> str:
    try:
        records, meta, _problems = logstore.read_boot(layout, machine, line, boot)
    except NotFound:
        # Not the reader's own message: it lists every guest that has logs.
        raise NotFound(f"{machine} has no log of {line} boot {boot}") from None
    return "".join(export.asciicast(records, meta, with_input=False))


def search(layout: Layout, machine: str, needle: str, ignore_case: bool) -> list[dict[str, Any]]:
    if not needle or len(needle) > MAX_NEEDLE:
        raise SpecError(f"search: give 1 to {MAX_NEEDLE} characters")
    refs = [r for r in logstore.find(layout, machine) if not r.archived]
    if not refs:
        return []
    hits = searchmod.search_refs(
        refs,
        logstore.load_key(layout),
        needle.encode(),
        ignore_case=ignore_case,
        executed=False,
    )
    out = []
    for h in hits[:MAX_HITS]:
        out.append(
            {
                "line": h.line,
                "boot": h.boot,
                "direction": h.direction,
                "user": h.user,
                "time_us": h.time_us,
                "offset": h.offset,
                "end_offset": h.end_offset,
                "context": h.context_text(),
            }
        )
    return out


def memory(home: Path, machine: str, since: float) -> dict[str, Any]:
    if not 0 < since <= MAX_SINCE:
        raise SpecError(f"since={since:g}: expected seconds from 1 to {MAX_SINCE} (7 days)")
    try:
        history = plot.load(memory_dir(home) / "log", time.time() - since, {machine})
    except WardenError:
        return {"t": [], "plugged": [], "used": [], "note": "no readings in this period"}
    series = history.guests.get(machine)
    if series is None:
        return {"t": [], "plugged": [], "used": [], "note": "no readings of this guest"}
    step = max(1, len(series.t) // POINTS)
    return {
        "t": series.t[::step],
        "plugged": series.plugged[::step],  # MiB
        "used": series.used[::step],  # MiB, null where the guest was not read
        "note": "",
    }
