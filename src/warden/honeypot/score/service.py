"""The score as the daemon serves it (POST /v1/honeypot/NAME/score): checks the request, runs
the battery on the machine's first line and adds what the host knows (kernel, profile)."""

from typing import TYPE_CHECKING, Any

from warden.daemon import machine as m
from warden.errors import Conflict, NotFound, SpecError
from warden.honeypot.score import runner

if TYPE_CHECKING:
    from warden.daemon.core import Daemon

TIMEOUT_MAX = 600.0


async def score_machine(daemon: "Daemon", name: str, body: dict[str, Any]) -> dict[str, Any]:
    sup = daemon.sups.get(name)
    if sup is None:
        raise NotFound(f"no machine named {name!r} (warden ls lists them)")
    if sup.machine.state is not m.State.RUNNING:
        raise Conflict(f"{name} is {sup.machine.state.value}: the score runs on a running guest")
    timeout = body.get("timeout", 180.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise SpecError(f"timeout {timeout!r}: expected seconds (1 to {TIMEOUT_MAX:g})")
    if not 1 <= timeout <= TIMEOUT_MAX:
        raise SpecError(f"timeout {timeout}: expected 1 to {TIMEOUT_MAX:g} seconds")
    line_name = str(body.get("line") or sup.spec.lines[0])
    line = sup.lines.get(line_name)
    if line is None or not line.open:
        raise Conflict(f"{name} has no open line {line_name!r} (its lines: {list(sup.lines)})")
    daemon.c.event(name, "honeypot-score", line=line_name, note="the battery runs on the console")
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
    daemon.c.event(name, "honeypot-scored", **out["summary"])
    return out
