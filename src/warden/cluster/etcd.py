"""A thin typed layer over aetcd (the asyncio etcd v3 client): endpoints, timeouts, errors.

aetcd takes one host and port; gRPC itself takes a list of addresses (`ipv4:a:p,b:p`) and
moves to the next one when a member stops answering, which is how one member down is
survived. Every call has a deadline (etcd without quorum accepts a request and never answers
it), and every aetcd or gRPC failure becomes EtcdUnavailable, naming the endpoints.
"""

import asyncio
import ipaddress
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd

from warden.errors import WardenError

T = TypeVar("T")
CALL_TIMEOUT = 2.0


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

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        self.requests += 1
        try:
            return await asyncio.wait_for(aw, self.timeout)
        except (TimeoutError, aetcd.ClientError, OSError) as e:
            raise EtcdUnavailable(f"etcd at {self.urls}: {what}: {e or 'no answer'}") from None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.close(), self.timeout)
        except (TimeoutError, aetcd.ClientError, OSError):
            pass

    async def prefix(self, prefix: str) -> dict[str, Entry]:
        rng = await self._call(f"read {prefix}", self.client.get_prefix(prefix.encode()))
        out: dict[str, Entry] = {}
        for kv in rng:
            key = kv.key.decode(errors="replace")
            out[key] = Entry(key, kv.value, kv.mod_revision, kv.lease)
        return out

    async def get(self, key: str) -> Entry | None:
        got = await self._call(f"read {key}", self.client.get(key.encode()))
        if got is None:
            return None
        return Entry(key, got.value, got.mod_revision, got.lease)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        await self._call(f"write {key}", self.client.put(key.encode(), value, lease=lease))

    async def delete(self, key: str) -> None:
        await self._call(f"delete {key}", self.client.delete(key.encode()))

    async def create(self, key: str, value: bytes, lease: int | None = None) -> bool:
        """Put `key` only if it does not exist; True if this call created it."""
        t = self.client.transactions
        ok, _ = await self._call(
            f"create {key}",
            self.client.transaction(
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
            self.client.transaction(
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
            self.client.transaction(
                compare=[t.value(key.encode()) == expect],
                success=[t.delete(key.encode())],
                failure=[],
            ),
        )
        return bool(ok)

    async def grant(self, ttl: int) -> int:
        lease: Any = await self._call("grant a lease", self.client.lease(ttl))
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Renew `lease`; its remaining TTL (0 or less: it has expired)."""
        reply: Any = await self._call("renew the lease", self.client.refresh_lease(lease))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        await self._call("revoke the lease", self.client.revoke_lease(lease))
