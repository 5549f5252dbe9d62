"""A network's dnsmasq: DHCP and DNS on its bridge, as libvirt runs one per network (pure).

Everything is on the command line (no configuration file, no lease file, no pid file): warden
restarts the process when a network's hosts change, which takes milliseconds, and nothing is
left on disk for a guest-facing daemon that drops to `nobody` to read. Every address is a
static reservation (dhcp-range ...,static): dnsmasq never invents one, so warden's rules and
forwards always know where each guest is.
"""

from dataclasses import dataclass

from warden.net.plan import NetPlan


@dataclass(frozen=True)
class Host:
    mac: str
    ip: str
    name: str


def argv(binary: str, net: NetPlan, hosts: list[Host], upstream: bool) -> list[str]:
    """`upstream`: forward other names to the resolvers of /etc/resolv.conf (nat networks);
    otherwise dnsmasq answers for the network's own guests only."""
    args = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--log-facility=-",
        "--leasefile-ro",
        "--no-hosts",
        "--no-ping",
        "--strict-order",
        "--domain-needed",
        "--bogus-priv",
        "--bind-dynamic",
        f"--interface={net.bridge}",
        "--except-interface=lo",
        "--dhcp-authoritative",
        f"--dhcp-range={net.net.network_address},static,{net.net.netmask},infinite",
        f"--dhcp-option=option:router,{net.gateway}",
        f"--dhcp-option=option:dns-server,{net.gateway}",
    ]
    if not upstream:
        args.append("--no-resolv")
    for h in sorted(hosts, key=lambda h: h.ip):
        args.append(f"--dhcp-host={h.mac},{h.ip},{h.name},infinite")
        args.append(f"--host-record={h.name},{h.ip}")
    return args
