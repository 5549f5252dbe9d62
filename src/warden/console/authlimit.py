"""How many failed logins the concentrator takes, per connection and per source address.

Sans-io: every method takes the time as an argument; warden.console.concentrator performs
what this decides (disconnects, delays) and tests drive it with made-up clocks.

- One connection: MAX_TRIES failed attempts (a refused key or a wrong password, as OpenSSH's
  MaxAuthTries counts them), then the connection is closed.
- One source: SOURCE_FAILURES wrong passwords within SOURCE_WINDOW seconds block the source
  for SOURCE_BLOCK seconds; its new connections are closed at once, before key exchange (no
  crypt, no CPU). Until then each wrong password is answered after a delay that doubles with
  the source's recent failures (FIRST_DELAY .. MAX_DELAY). Refused keys do not count here:
  a key cannot be guessed, and a user whose agent holds several keys must not lock herself out.
- A source is an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64).
- Memory is bounded: at most MAX_SOURCES sources are remembered (the least recently failing
  are forgotten first), each with at most SOURCE_FAILURES timestamps.
"""

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

MAX_TRIES = 6
SOURCE_FAILURES = 10
SOURCE_WINDOW = 60.0
SOURCE_BLOCK = 60.0
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
MAX_SOURCES = 4096


def source_key(host: str) -> str:
    """The unit a limit applies to: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class SourceLimiter:
    def __init__(
        self,
        failures: int = SOURCE_FAILURES,
        window: float = SOURCE_WINDOW,
        block: float = SOURCE_BLOCK,
        max_sources: int = MAX_SOURCES,
    ):
        if failures < 1 or window <= 0 or block <= 0 or max_sources < 1:
            raise ValueError("limits must be positive")
        self.failures = failures
        self.window = window
        self.block = block
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def blocked(self, key: str, now: float) -> float:
        """Seconds `key` stays blocked (0: it may try)."""
        s = self._sources.get(key)
        return max(0.0, s.blocked_until - now) if s is not None else 0.0

    def _recent(self, s: _Source, now: float) -> deque[float]:
        while s.failures and s.failures[0] <= now - self.window:
            s.failures.popleft()
        return s.failures

    def failed(self, key: str, now: float) -> bool:
        """Record a wrong password from `key`; True when this one starts a block."""
        s = self._sources.pop(key, None) or _Source()
        self._sources[key] = s  # most recent last
        recent = self._recent(s, now)
        recent.append(now)
        while len(recent) > self.failures:
            recent.popleft()
        started = False
        if len(recent) >= self.failures and s.blocked_until <= now:
            s.blocked_until = now + self.block
            recent.clear()
            started = True
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        return started

    def delay(self, key: str, now: float) -> float:
        """How long to wait before answering a wrong password from `key`."""
        s = self._sources.get(key)
        n = len(self._recent(s, now)) if s is not None else 0
        return min(MAX_DELAY, FIRST_DELAY * 2 ** (n - 1)) if n else 0.0
