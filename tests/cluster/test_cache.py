"""A host's copy of the cluster's keys (warden.cluster.cache) against a real etcd: changes
arrive by the watch, without full reads; the copy is read again in full on schedule, and
catches up when its etcd member goes away."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster
from warden.cluster.cache import Cache
from warden.cluster.etcd import Etcd, EtcdUnavailable


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    e = EtcdCluster(members=1).start_all()
    yield e
    e.close()


async def until(cache: Cache, cond: object, timeout: float = 5.0) -> dict[str, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {k: e.value for k, e in (await cache.read()).items()}
        if callable(cond) and cond(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {seen}")
        await asyncio.sleep(0.05)


def test_changes_arrive_by_the_watch(etcd: EtcdCluster) -> None:
    async def go() -> None:
        client = Etcd(etcd.urls)
        cache = Cache(client, "/warden/", resync=60)
        try:
            await client.put("/warden/a", b"1")
            await client.put("/other", b"x")
            assert await until(cache, lambda s: s == {"/warden/a": b"1"})
            await client.put("/warden/b", b"2")
            await client.put("/warden/a", b"3")
            await client.delete("/warden/b")
            await client.put("/warden/c", b"4")
            seen = await until(cache, lambda s: s == {"/warden/a": b"3", "/warden/c": b"4"})
            assert seen
            assert cache.reads == 1  # one full read; the rest came by the watch
        finally:
            await cache.close()
            await client.close()

    asyncio.run(go())


def test_read_again_in_full_on_schedule(etcd: EtcdCluster) -> None:
    async def go() -> None:
        client = Etcd(etcd.urls)
        cache = Cache(client, "/warden/", resync=0.3)
        try:
            await cache.read()
            await asyncio.sleep(0.4)
            await cache.read()
            assert cache.reads == 2
        finally:
            await cache.close()
            await client.close()

    asyncio.run(go())


def test_the_copy_catches_up_when_its_member_goes_away() -> None:
    e = EtcdCluster().start_all()
    try:

        async def go() -> None:
            client = Etcd(e.urls, timeout=5)
            cache = Cache(client, "/warden/", resync=60)
            try:
                await client.put("/warden/a", b"1")
                await until(cache, lambda s: s == {"/warden/a": b"1"})
                e.stop("m0")  # the member the client's channel uses first
                # If m0 led, the other two elect a new leader first (election timeout 2 s).
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await client.put("/warden/a", b"2")
                        break
                    except EtcdUnavailable:
                        if time.monotonic() > deadline:
                            raise

                # Long before the scheduled full read (60 s): the watch moved to another
                # member, or broke and the copy was read again.
                await until(cache, lambda s: s == {"/warden/a": b"2"}, timeout=15)
            finally:
                await cache.close()
                await client.close()

        asyncio.run(go())
    finally:
        e.close()
