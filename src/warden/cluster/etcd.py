"""A thin typed layer over aetcd (the asyncio etcd v3 client): endpoints, timeouts, errors.

aetcd takes one host and port; gRPC itself takes a list of addresses (`ipv4:a:p,b:p`) and
moves to the next one when a member stops answering, which is how one member down is
survived. Every call has a deadline (etcd without quorum accepts a request and never answers
it), and every aetcd or gRPC failure becomes EtcdUnavailable, naming the endpoints.
"""

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd

from warden.errors import WardenError

T = TypeVar("T")
# A host's agent: a call that outlasts this is counted as etcd not answering, which the
# fence's arithmetic (docs/formats/cluster.md) depends on.
CALL_TIMEOUT = 2.0
# An operator's command (`warden --cluster ... apply`) rides out a leader election instead:
# after the leader dies, the others wait an election timeout (etcd's default 1 s, drawn up
# to twice that; our tests run etcd at 2 s) and then vote, and a request waits meanwhile.
ADMIN_CALL_TIMEOUT = 6.0


class EtcdUnavailable(WardenError):
    """No etcd member answered in time (quorum lost, members down, or a bad URL)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def parse_urls(text: str) -> list[Endpoint]:
    """`http://127.0.0.1:2379,http://127.0.0.1:22379` (or host:port): the etcd members."""
    out: list[Endpoint] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise WardenError(
                f"--cluster {item!r}: expected http://HOST:PORT (etcd's client URL; "
                "TLS is not supported yet)"
            )
        try:
            port = parts.port or 2379
        except ValueError:
            raise WardenError(f"--cluster {item!r}: the port is not a number") from None
        out.append(Endpoint(parts.hostname, port))
    if not out:
        raise WardenError("--cluster: no etcd URL given (e.g. http://127.0.0.1:2379)")
    return out


def _target(endpoints: list[Endpoint]) -> tuple[str, int]:
    """aetcd's (host, port) such that f"{host}:{port}" is gRPC's multi-address target."""
    if len(endpoints) == 1:
        return endpoints[0].host, endpoints[0].port
    for e in endpoints:
        try:
            ipaddress.IPv4Address(e.host)
        except ValueError:
            raise WardenError(
                f"--cluster: {e.host} is not an IPv4 address; with several members give "
                "each as an address (gRPC's list target takes addresses only)"
            ) from None
    head = ",".join(f"{e.host}:{e.port}" for e in endpoints[:-1])
    return f"ipv4:{head},{endpoints[-1].host}", endpoints[-1].port


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    lease: int


class Etcd:
    """One client; close() when done."""

    def __init__(self, urls: str, timeout: float = CALL_TIMEOUT):
        self.endpoints = parse_urls(urls)
        self.urls = urls
        self.timeout = timeout
        host, port = _target(self.endpoints)
        # pick_first over the list, reconnecting fast when a member goes away.
        options = {
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 1000,
        }
        self.client = aetcd.Client(
            host=host, port=port, timeout=max(1, int(timeout)), options=options
        )
        self.requests = 0  # how many requests this client made (benchmarks, status)

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()` under the deadline. A request refused as UNAVAILABLE (the member the
        channel used just went away: gRPC fails the calls in flight, then moves to the next
        address) is sent once more. Every request here may be repeated: puts and deletes are
        idempotent; a create that is repeated after it succeeded reports False, and the
        caller finds its own record on the next read."""
        for attempt in (1, 2):
            self.requests += 1
            try:
                return await asyncio.wait_for(fn(), self.timeout)
            except aetcd.ConnectionFailedError as e:
                if attempt == 2:
                    raise EtcdUnavailable(f"etcd at {self.urls}: {what}: {e}") from None
                await asyncio.sleep(0.2)
            except (TimeoutError, aetcd.ClientError, OSError) as e:
                why = str(e) or "no answer"
                raise EtcdUnavailable(f"etcd at {self.urls}: {what}: {why}") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.close(), self.timeout)
        except (TimeoutError, aetcd.ClientError, OSError):
            pass

    async def prefix(self, prefix: str) -> dict[str, Entry]:
        rng = await self._call(f"read {prefix}", lambda: self.client.get_prefix(prefix.encode()))
        out: dict[str, Entry] = {}
        for kv in rng:
            key = kv.key.decode(errors="replace")
            out[key] = Entry(key, kv.value, kv.mod_revision, kv.lease)
        return out

    async def prefix_at(self, prefix: str) -> tuple[dict[str, Entry], int]:
        """The keys under `prefix` and the store's revision they were read at."""
        rng: Any = await self._call(
            f"read {prefix}", lambda: self.client.get_prefix(prefix.encode())
        )
        out: dict[str, Entry] = {}
        for kv in rng:
            key = kv.key.decode(errors="replace")
            out[key] = Entry(key, kv.value, kv.mod_revision, kv.lease)
        return out, int(rng.header.revision)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[tuple[bool, Entry]]:
        """Changes under `prefix` from `start_revision` on: (True, entry) for a put, (False,
        entry) for a delete. Ends with EtcdUnavailable when the stream breaks."""
        w: Any = await self._call(
            f"watch {prefix}",
            lambda: self.client.watch_prefix(prefix.encode(), start_revision=start_revision),
        )
        try:
            async for ev in w:
                kv = ev.kv
                key = kv.key.decode(errors="replace")
                yield ev.kind == "PUT", Entry(key, kv.value, kv.mod_revision, kv.lease)
        except (aetcd.ClientError, OSError) as e:
            raise EtcdUnavailable(f"etcd at {self.urls}: watch {prefix}: {e}") from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.cancel(), self.timeout)

    async def get(self, key: str) -> Entry | None:
        got = await self._call(f"read {key}", lambda: self.client.get(key.encode()))
        if got is None:
            return None
        return Entry(key, got.value, got.mod_revision, got.lease)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        await self._call(f"write {key}", lambda: self.client.put(key.encode(), value, lease=lease))

    async def delete(self, key: str) -> None:
        await self._call(f"delete {key}", lambda: self.client.delete(key.encode()))

    async def create(self, key: str, value: bytes, lease: int | None = None) -> bool:
        """Put `key` only if it does not exist; True if this call created it."""
        t = self.client.transactions
        ok, _ = await self._call(
            f"create {key}",
            lambda: self.client.transaction(
                compare=[t.version(key.encode()) == 0],
                success=[t.put(key.encode(), value, lease=lease)],
                failure=[],
            ),
        )
        return bool(ok)

    async def replace_if(self, key: str, expect: bytes, value: bytes, lease: int | None) -> bool:
        """Put `key` only if its value is still `expect` (an owner updating its record)."""
        t = self.client.transactions
        ok, _ = await self._call(
            f"update {key}",
            lambda: self.client.transaction(
                compare=[t.value(key.encode()) == expect],
                success=[t.put(key.encode(), value, lease=lease)],
                failure=[],
            ),
        )
        return bool(ok)

    async def delete_if(self, key: str, expect: bytes) -> bool:
        t = self.client.transactions
        ok, _ = await self._call(
            f"delete {key}",
            lambda: self.client.transaction(
                compare=[t.value(key.encode()) == expect],
                success=[t.delete(key.encode())],
                failure=[],
            ),
        )
        return bool(ok)

    async def grant(self, ttl: int) -> int:
        lease: Any = await self._call("grant a lease", lambda: self.client.lease(ttl))
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Renew `lease`; its remaining TTL (0 or less: it has expired)."""
        reply: Any = await self._call("renew the lease", lambda: self.client.refresh_lease(lease))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        await self._call("revoke the lease", lambda: self.client.revoke_lease(lease))
