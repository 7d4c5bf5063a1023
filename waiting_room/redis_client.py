"""Redis clients with a bounded, waiting connection pool.

The default pool of redis-py fails a command outright once its connections are all busy;
under a flash-sale spike the right behaviour is to wait briefly for a free connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from flashsale.config import Settings


def connect_redis(settings: Settings, *, decode: bool = True) -> Redis:
    """A client for `REDIS_URL`; `decode=False` for binary values (the seat bitmap).

    Every command waits at most FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS for its answer (and a
    connection as long to open): without a socket timeout a command sent to a stalled Redis, or
    across a partition, waits until TCP gives up, a quarter of an hour. FlashSale sends no
    blocking command (no BLPOP, no XREADGROUP BLOCK), so no answer may rightly take longer."""
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
