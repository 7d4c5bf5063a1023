"""Redis clients for one node or a Redis Cluster, and what works the same on both.

On one node, the pool waits briefly for a free connection under a spike instead of failing
the command outright (redis-py's default). On a cluster, redis-py's `RedisCluster` routes
each command by the slot of its key and follows MOVED, ASK and failovers; every key of a sale
shares the sale's hash tag, so all of a sale's work lands on one shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from flashsale.config import Settings


class ClusterClient(RedisCluster):
    """redis-py's `RedisCluster`, safe for many tasks at once from its first command.

    redis-py 8.1 chooses where a command goes before it learns the cluster's slots: every
    command issued while the client is not yet initialized (at start-up, or after it closed its
    connections to refresh the topology) is sent to the default node and answered MOVED. And
    every fifth MOVED (`reinitialize_steps`) it closes every connection of the client, those
    other tasks are using included, which then fail with an AttributeError, not a Redis error
    (measured: 30 concurrent first commands on 3 primaries, 32 MOVED, and a persister starting
    on a cluster failed a sale's tick with it; `tests/cluster/test_client.py`). So: the slots
    are learnt before any command is routed, and a MOVED patches the slot map (`move_slot`)
    instead of closing everything; a lost connection still refreshes the whole map."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("reinitialize_steps", 0)
        super().__init__(*args, **kwargs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


# A client for either topology: the commands FlashSale uses have the same signature on both.
RedisClient = Redis | RedisCluster


async def is_cluster(settings: Settings) -> bool:
    """FLASHSALE_REDIS_CLUSTER, `auto` answered by the server itself (`INFO cluster`)."""
    if settings.redis_cluster != "auto":
        return settings.redis_cluster == "true"
    probe = Redis.from_url(settings.redis_url)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


def connect_redis(settings: Settings, *, cluster: bool, decode: bool = True) -> RedisClient:
    """A client for `REDIS_URL`; `decode=False` for binary values (the seat bitmap).

    Every command waits at most FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS for its answer (and a
    connection as long to open): without a socket timeout a command sent to a stalled Redis, or
    across a partition, waits until TCP gives up, a quarter of an hour. FlashSale sends no
    blocking command (no BLPOP, no XREADGROUP BLOCK), so no answer may rightly take longer."""
    if cluster:
        # A shard without a primary (mid-failover) must not keep the client from starting,
        # nor fail commands for the other shards; a node that went silent costs a refresh of
        # the slot map no more than it costs the hot path.
        return ClusterClient.from_url(
            settings.redis_url,
            decode_responses=decode,
            max_connections=settings.redis_max_connections,
            require_full_coverage=False,
            health_check_interval=30,
            socket_timeout=settings.redis_command_timeout_seconds,
            socket_connect_timeout=settings.redis_command_timeout_seconds,
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        decode_responses=decode,
        health_check_interval=30,
        socket_timeout=settings.redis_command_timeout_seconds,
        socket_connect_timeout=settings.redis_command_timeout_seconds,
    )
    return Redis(connection_pool=pool)


async def open_redis(settings: Settings, *, decode: bool = True) -> RedisClient:
    """`connect_redis` for the topology FLASHSALE_REDIS_CLUSTER says (or the server does)."""
    return connect_redis(settings, cluster=await is_cluster(settings), decode=decode)


async def remove_matching(redis: RedisClient, pattern: str) -> int:
    """Delete every key matching `pattern` (SCAN on every primary; each page unlinked at once,
    split by slot on a cluster); returns how many were deleted."""
    removed = 0
    page: list[Any] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        page.append(key)
        if len(page) >= 1000:
            removed += await redis.unlink(*page)
            page.clear()
    if page:
        removed += await redis.unlink(*page)
    return removed


async def primaries(redis: RedisClient) -> list[str]:
    """The primaries of a cluster as `host:port`, in the order of the slots they serve (the
    first holds slot 0); one node's own address otherwise."""
    if not isinstance(redis, RedisCluster):
        kwargs = redis.connection_pool.connection_kwargs
        return [f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"]
    await redis.initialize()
    owners = redis.nodes_manager.slots_cache
    first: dict[str, int] = {}
    for slot in sorted(owners):
        if owners[slot]:
            first.setdefault(owners[slot][0].name, slot)
    return sorted(first, key=first.__getitem__)


async def node_of(redis: RedisClient, key: str) -> str:
    """The `host:port` of the primary holding `key` (the only node, off a cluster)."""
    if not isinstance(redis, RedisCluster):
        return (await primaries(redis))[0]
    await redis.initialize()
    return str(redis.nodes_manager.get_node_from_slot(redis.keyslot(key)).name)


# redis-py types every reply as `bytes | str`, whether or not the client decodes; these give
# the replies of a decoding client the type they have (and decode, should bytes come anyway).


def text(value: bytes | str) -> str:
    """One reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def texts(values: Iterable[Any]) -> list[str]:
    """A list reply as text."""
    return [text(v) for v in values]


def text_map(values: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply (HGETALL) as text."""
    return {text(k): text(v) for k, v in values.items()}


def binary(value: bytes | str | None) -> bytes | None:
    """A binary value (a bitmap) read with a client that does not decode."""
    if isinstance(value, str):
        raise TypeError("a binary value was read with a decoding Redis client")
    return value
