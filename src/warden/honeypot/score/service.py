"""The score as the daemon serves it (POST /v1/honeypot/NAME/score): checks the request, runs
the battery on the machine's first line and adds what the host knows (kernel, profile)."""

from typing import Any

from warden.daemon import machine as m
from warden.daemon.seam import Core
from warden.errors import Conflict, SpecError
from warden.honeypot.score import runner

TIMEOUT_MAX = 600.0


async def score_machine(core: Core, name: str, body: dict[str, Any]) -> dict[str, Any]:
    sup = core.guests.require(name)
    if sup.state is not m.State.RUNNING:
        raise Conflict(f"{name} is {sup.state.value}: the score runs on a running guest")
    timeout = body.get("timeout", 180.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise SpecError(f"timeout {timeout!r}: expected seconds (1 to {TIMEOUT_MAX:g})")
    if not 1 <= timeout <= TIMEOUT_MAX:
        raise SpecError(f"timeout {timeout}: expected 1 to {TIMEOUT_MAX:g} seconds")
    line_name = str(body.get("line") or sup.spec.lines[0])
    line = sup.lines.get(line_name)
    if line is None or not line.open:
        raise Conflict(f"{name} has no open line {line_name!r} (its lines: {list(sup.lines)})")
    core.event(name, "honeypot-score", line=line_name, note="the battery runs on the console")
    report = await runner.score_line(line, float(timeout), bool(body.get("force", False)))
    out = report.to_json()
    if body.get("answers"):  # the guest's raw answers, e.g. to record test data
        out["answers"] = [[p, w, rc, text] for (p, w), (rc, text) in sorted(report.answers.items())]
    out.update(
        machine=name,
        kernel=sup.spec.kernel,
        disguise=sup.spec.disguise or None,
        line=line_name,
    )
    core.event(name, "honeypot-scored", **out["summary"])
    return out
