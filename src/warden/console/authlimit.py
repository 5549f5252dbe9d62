"""How many failed logins a front end takes (the SSH concentrator, the web console), per
connection and per source address, and where crypt(3) runs.

The limits are sans-io: every method takes the time as an argument; warden.console.concentrator
and warden.web perform what they decide (disconnects, delays) and tests drive them with
made-up clocks. `CryptChecker` is the one piece that is not: password hashes are verified on a
thread of its own with a bounded queue, so a flood of passwords waits for itself and never for
the daemon's shared executor (a full queue refuses the attempt at once).

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

import asyncio
import ipaddress
import logging
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from passlib.context import CryptContext  # type: ignore[import-untyped]

log = logging.getLogger("warden.authlimit")

MAX_TRIES = 6
SOURCE_FAILURES = 10
SOURCE_WINDOW = 60.0
SOURCE_BLOCK = 60.0
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
MAX_SOURCES = 4096

# Only the crypt(3) schemes the fleet schema accepts ($1$, $5$, $6$). passlib (the maintained
# libpass fork) verifies them in pure Python or via libcrypt, with no shelling out.
HASHES = CryptContext(schemes=["sha512_crypt", "sha256_crypt", "md5_crypt"])
# Verified for unknown users too, so a wrong user name costs the same time as a wrong password.
DUMMY_HASH = "$6$wardenwardenwar$" + "x" * 86
CRYPT_WORKERS = 1  # crypt() threads; the builtin sha512_crypt holds the GIL anyway
CRYPT_QUEUE = 8  # password checks running or waiting; more are refused at once


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


def password_ok(stored: str, password: str) -> bool:
    """crypt(3) check (blocking); `stored` empty: no such password (the dummy hash is checked
    all the same, so that an unknown user takes as long as a wrong password)."""
    try:
        ok = bool(HASHES.verify(password, stored or DUMMY_HASH))
    except (ValueError, TypeError):
        ok = False
    return ok and bool(stored)


class CryptChecker:
    """Password checks on CRYPT_WORKERS threads of their own, at most CRYPT_QUEUE at a time.

    One per front end; `close()` ends its thread. `verify` is the blocking check (a test may
    put a slow one in its place)."""

    def __init__(self, name: str, workers: int = CRYPT_WORKERS, queue: int = CRYPT_QUEUE):
        self.name = name
        self.workers = workers
        self.queue = queue
        self.executor: ThreadPoolExecutor | None = None  # made on the first check
        self.pending = 0
        self.verify = password_ok

    async def check(self, stored: str, password: str) -> bool | None:
        """True or False; None when `queue` checks are pending already (refused at once)."""
        if self.pending >= self.queue:
            log.warning("%s: %d password checks pending; one refused", self.name, self.queue)
            return None
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="warden-crypt")
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, self.verify, stored, password)
        finally:
            self.pending -= 1

    def close(self, wait: bool = False) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=wait, cancel_futures=True)
            self.executor = None
