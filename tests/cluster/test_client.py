"""The cluster client under many concurrent callers, on a real Redis Cluster.

redis-py 8.1's `RedisCluster` routes the commands issued before it knows the slots to one node
(each answered MOVED), and at every fifth MOVED closes every connection of the client, those
other callers are using included (seen failing a persister's first tick with an AttributeError,
not a Redis error). `ClusterClient` learns the slots before routing anything and patches its
map on MOVED; the plain client's behaviour is asserted beside it, so that a redis-py that no
longer needs the difference shows up here."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import MovedError

from flashsale.waiting_room.redis_client import ClusterClient
from tests.support.cluster import shared_cluster_url

CALLERS = 60


class Watched:
    """The MOVED the cluster's nodes answered, and the times the client closed every
    connection, while a test runs."""

    def __init__(self, client: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.moved = 0
        self.closed_all = 0
        execute = ClusterNode.execute_command
        close = client.aclose

        async def counted(node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
            try:
                return await execute(node, *args, **kwargs)
            except MovedError:
                self.moved += 1
                raise

        async def closing() -> None:
            self.closed_all += 1
            await close()

        monkeypatch.setattr(ClusterNode, "execute_command", counted)
        monkeypatch.setattr(client, "aclose", closing)


async def concurrent_commands(client: RedisCluster) -> list[Any]:
    """One command per caller, all at once, on keys spread over the slots."""
    stem = f"client-test-{secrets.token_hex(3)}"
    keys = [f"{stem}:{{sale-{n}}}:holds" for n in range(CALLERS)]
    return await asyncio.gather(
        *(client.zrangebyscore(key, "-inf", 0) for key in keys), return_exceptions=True
    )


async def stale_map(client: RedisCluster) -> None:
    """Every slot's owner shifted by one primary, as after a resharding the client missed."""
    await client.initialize()
    cache = client.nodes_manager.slots_cache
    owners = sorted({nodes[0].name for nodes in cache.values()})
    assert len(owners) >= 2, "needs a cluster of several primaries"
    by_name = {nodes[0].name: nodes for nodes in cache.values()}
    for slot, nodes in list(cache.items()):
        cache[slot] = by_name[owners[(owners.index(nodes[0].name) + 1) % len(owners)]]


@pytest.mark.parametrize("client_class", [ClusterClient, RedisCluster])
async def test_first_commands_at_once(
    client_class: type[RedisCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_class.from_url(shared_cluster_url())
    watched = Watched(client, monkeypatch)
    try:
        answers = await concurrent_commands(client)
    finally:
        monkeypatch.undo()
        await client.aclose()
    if client_class is ClusterClient:
        assert answers == [[]] * CALLERS
        assert watched.moved == 0  # each command went to its slot's owner
    else:
        assert watched.moved > 0  # sent before the slots were known


@pytest.mark.parametrize("client_class", [ClusterClient, RedisCluster])
async def test_a_stale_slot_map(
    client_class: type[RedisCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_class.from_url(shared_cluster_url())
    try:
        await stale_map(client)
        watched = Watched(client, monkeypatch)
        answers = await concurrent_commands(client)
    finally:
        monkeypatch.undo()
        await client.aclose()
    assert watched.moved > 0  # the map was stale
    if client_class is ClusterClient:
        assert answers == [[]] * CALLERS  # MOVED put it right
        assert watched.closed_all == 0  # no caller's connection closed under it
    else:
        assert watched.closed_all > 0
