"""The fleet file's contents as warden holds them once valid: the names' patterns and the
frozen dataclasses a Fleet is made of (spec/fleet.py parses and validates a file into them;
spec/checks.py holds the checks of each field).
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warden.spec import recycle as recyclemod

if TYPE_CHECKING:
    from warden.spec.pool import Pool

# Names and identifiers match in full: every check uses fullmatch, and the patterns are anchored
# with \A and \Z (not ^ and $, which also match before a trailing newline) for callers that
# use .match (console/access.py).
MACHINE_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,30}\Z")
OWNER_NAME = re.compile(r"\A[a-z_][a-z0-9_-]{0,31}\Z")
LINE_NAME = re.compile(r"\A(con0|ssl\d{1,2})\Z")
MAX_SERIAL_LINES = 8
RESTART_POLICIES = ("no", "on-failure", "always")
EGRESS_RATE = re.compile(r"\A(\d+)/(second|minute|hour)\Z")
FORWARD = re.compile(r"\A(tcp|udp):(\d{1,5}):(\d{1,5})\Z")
CRYPT_HASH = re.compile(r"\A\$(1|5|6)\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}\Z")
NETNS_NAME = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
NETWORK_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,10}\Z")
WEB_URL = re.compile(
    r"\A(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?/?\Z"
)


@dataclass(frozen=True)
class Owner:
    name: str
    keys: tuple[str, ...] = ()
    password_hash: str = ""
    admin: bool = False


@dataclass(frozen=True)
class Nic:
    network: str
    ip: str = ""  # empty: DHCP


@dataclass(frozen=True)
class Forward:
    proto: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_port}:{self.guest_port}"


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    nat: bool = False

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1)


@dataclass(frozen=True)
class Machine:
    name: str
    owner: str
    image: str = "minimal"
    memory: int = 128 << 20
    memory_min: int = 0  # 0: no floor beyond the balancer's own safety margin
    memory_weight: int = 100
    serial_lines: int = 0
    kernel_args: str = ""
    autostart: bool = True
    kernel: str = "stock"
    restart: str = "no"
    root_password_hash: str = ""
    admin_password_hash: str = ""  # seed WARDEN_ADMIN_HASH: the Debian image's user admin
    ssh_keys: tuple[str, ...] = ()  # seed WARDEN_SSH_KEYS: authorized keys of root and admin
    nics: tuple[Nic, ...] = ()
    forwards: tuple[Forward, ...] = ()
    egress: str = "allow"
    honeypot: bool = False
    tty_log: bool = False
    disguise: str = ""
    jail: bool = True
    recycle: str = ""  # "" or a warden.spec.recycle policy: on-logout, idle:D, every:D
    cpu: tuple[int, ...] = ()  # pinned host CPUs; (): warden places it (warden.cpu)
    # In a cluster (warden.cluster): the host it must run on, and labels its host must have.
    host: str = ""
    host_labels: tuple[str, ...] = ()  # "key=value" each
    spread: str = ""  # a group name: machines of one group go to different hosts first

    @property
    def recycle_policy(self) -> recyclemod.RecyclePolicy | None:
        return recyclemod.parse(self.recycle)

    @property
    def lines(self) -> tuple[str, ...]:
        return ("con0",) + tuple(f"ssl{i}" for i in range(self.serial_lines))


@dataclass(frozen=True)
class Host:
    memory_budget: int = 0  # 0: host MemTotal minus memory_reserve
    memory_reserve: int = 1 << 30
    netns: str = ""
    uid_base: int = 200000
    uid_count: int = 65536
    balance_interval: float = 1.0
    balance_watch: float = 0.1  # headroom checks between intervals; 0: none (docs: Memory)
    boot_slots: int = 0  # guests booting at once; 0: from the host's free CPUs (daemon/admission)
    # Free space kept in WARDEN_HOME for the guests' COW growth (warden.storage.policy): the
    # larger of the two; both 0: max(1 GiB, 2%), at most 1/8 of the filesystem.
    home_floor: int = 0
    home_floor_percent: float = 0.0


@dataclass(frozen=True)
class Concentrator:
    listen: str = ""  # "" : no SSH concentrator
    idle_timeout: int = 1800

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Web:
    """The web console (warden.web): off when `listen` is empty."""

    listen: str = ""  # "" : no web console
    url: str = ""  # the address browsers use (login links); default: from listen
    cert: str = ""  # PEM certificate chain; "" : warden makes one in WARDEN_HOME/keys
    key: str = ""  # its PEM private key
    insecure_http: bool = False  # plain HTTP: loopback listen addresses only
    idle_timeout: int = 900  # seconds without a request before a login session ends

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"


@dataclass(frozen=True)
class Cluster:
    """[cluster]: what every host of a cluster shares (docs/formats/cluster.md)."""

    storage: str = ""  # a directory every host reaches at this path: COW disks, their locks


@dataclass(frozen=True)
class Logs:
    quota: int = 64 << 20  # per guest, all of its session logs together
    enabled: bool = True  # false: no session logs (consoles still work)


@dataclass(frozen=True)
class Fleet:
    source: str
    host: Host = field(default_factory=Host)
    concentrator: Concentrator = field(default_factory=Concentrator)
    web: Web = field(default_factory=Web)
    logs: Logs = field(default_factory=Logs)
    cluster: Cluster = field(default_factory=Cluster)
    owners: tuple[Owner, ...] = ()
    networks: tuple[Network, ...] = ()
    machines: tuple[Machine, ...] = ()  # a pool's guests among them (warden.spec.pool)
    pools: "tuple[Pool, ...]" = ()

    def owner(self, name: str) -> Owner | None:
        return next((o for o in self.owners if o.name == name), None)

    def machine(self, name: str) -> Machine | None:
        return next((m for m in self.machines if m.name == name), None)
