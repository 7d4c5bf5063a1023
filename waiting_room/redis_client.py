"""Redis clients with a bounded, waiting connection pool.

The default pool of redis-py fails a command outright once its connections are all busy;
under a flash-sale spike the right behaviour is to wait briefly for a free connection.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from flashsale.settings import Settings


def connect_redis(settings: Settings, *, decode: bool = True) -> Redis:
    """A client for `REDIS_URL`; `decode=False` for binary values (the seat bitmap)."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        decode_responses=decode,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)
