"""A guest's row in warden.db and what `warden ls` shows of it, read off its Supervisor."""

import time
from typing import TYPE_CHECKING, Any

from warden.store import MachineRow

if TYPE_CHECKING:
    from warden.daemon.supervisor import Supervisor


def row_of(sup: "Supervisor") -> MachineRow:
    """The machine's row in warden.db."""
    return MachineRow(
        name=sup.name,
        state=str(sup.machine.state),
        desired=sup.machine.desired,
        pid=sup.machine.pid,
        pid_start=sup.pid_start,
        boot=sup.boot,
        started_at=sup.started_at,
        base=sup.base,
        uid=sup.uid,
        last_exit=sup.machine.last_exit,
    )


def info_of(sup: "Supervisor") -> dict[str, Any]:
    """What `warden ls` shows (kept cheap: no I/O)."""
    up = time.time() - sup.started_at if sup.started_at and sup.machine.pid else None
    return {
        "name": sup.name,
        "owner": sup.spec.owner,
        "state": str(sup.machine.state),
        "memory": sup.spec.memory,
        "image": sup.spec.image,
        "kernel": sup.spec.kernel,
        "pid": sup.machine.pid,
        "uptime": up,
        "boot": sup.boot,
        "lines": list(sup.spec.lines),
        "last_exit": sup.machine.last_exit,
        "desired": sup.machine.desired,
        "cpu": sup.cpus,
        "waiting": sup.ctx.boots.waiting(sup.name) or None,
        "pause_reason": sup.machine.pause_reason or None,
    }
