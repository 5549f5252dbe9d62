"""One host's decisions: which machines to claim, run and give up (pure; times are monotonic
seconds of this host).

A host runs a machine only while it holds the machine's owner record (docs/formats/cluster.md,
"The fencing argument"). For a machine assigned to it, it claims the record once the record
has been absent for the grace period (the previous owner's fence has run by then); for a
machine it owns that is assigned elsewhere (or nowhere), it stops the guest and then releases
the record.
"""

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

GRACE = 2.0


@dataclass(frozen=True)
class Claim:
    name: str


@dataclass(frozen=True)
class Release:
    """Stop the guest, then delete the owner record."""

    name: str


@dataclass
class HostMemory:
    """What the host remembers between rounds: when it first saw each owner record absent."""

    absent_since: dict[str, float] = field(default_factory=dict)


def plan(
    me: str,
    assigned_to_me: Set[str],
    owners: Mapping[str, str],
    memory: HostMemory,
    now: float,
    grace: float = GRACE,
) -> list[Claim | Release]:
    """`owners` maps each machine with an owner record to its owner host."""
    actions: list[Claim | Release] = []
    for name in sorted(n for n, host in owners.items() if host == me and n not in assigned_to_me):
        actions.append(Release(name))
    for name in list(memory.absent_since):
        if name not in assigned_to_me or name in owners:
            del memory.absent_since[name]
    for name in sorted(assigned_to_me):
        if name in owners:
            continue  # ours already, or still another host's: wait for it to go
        first = memory.absent_since.setdefault(name, now)
        if now - first >= grace:
            actions.append(Claim(name))
    return actions
