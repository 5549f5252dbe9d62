"""Plugs the memory balancer into the daemon (imported by Daemon._install_features).

BootHook      admission and room in the budget before a boot; ledger reset at "up"
service       the balancing loop (start/stop with the daemon; fleet_changed)
start check   admission refused before a start changes anything
API           GET /v1/memory (what `warden top` shows), POST /v1/memory/{name}
              {"size": "256M" | "auto"} (`warden mem set`)
notify        MEMORY from a guest's OOM hook: a hint that starts a rescue
"""

from typing import TYPE_CHECKING

from warden.memory.balancer import Balancer
from warden.uml.mconsole import NotifyType

if TYPE_CHECKING:
    from warden.daemon.core import Daemon


def install(daemon: "Daemon") -> Balancer:
    balancer = Balancer(daemon)
    daemon.c.hooks.append(balancer)
    daemon.services.append(balancer)
    daemon.start_checks.append(balancer.check_start)
    daemon.add_route("GET", "memory", balancer.http_status)
    daemon.add_route("POST", "memory/{name}", balancer.http_set)
    daemon.c.on_notify[NotifyType.MEMORY] = lambda sup, note: balancer.memory_notified(
        sup, note.data
    )
    return balancer
