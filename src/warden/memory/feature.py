"""Plugs the memory balancer into the daemon (imported by Daemon._install_features).

BootHook      admission and room in the budget before a boot; ledger reset at "up"
service       the balancing loop (start/stop with the daemon; fleet_changed)
start check   admission refused before a start changes anything
API           GET /v1/memory (what `warden top` shows), POST /v1/memory/{name}
              {"size": "256M" | "auto"} (`warden mem set`)
"""

from typing import TYPE_CHECKING

from warden.memory.balancer import Balancer

if TYPE_CHECKING:
    from warden.daemon.core import Daemon


def install(daemon: "Daemon") -> Balancer:
    balancer = Balancer(daemon)
    daemon.c.hooks.append(balancer)
    daemon.services.append(balancer)
    daemon.start_checks.append(balancer.check_start)
    daemon.add_route("GET", "memory", balancer.http_status)
    daemon.add_route("POST", "memory/{name}", balancer.http_set)
    return balancer
