"""A Redis that does not answer, or not yet, is an outage: FlashSale's commands fail fast and
the API answers 503 with Retry-After, never a 500.

A stalled Redis (SIGSTOP, or across a partition) makes every Redis command fail after
FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS instead of waiting until TCP gives up. Found by the
chaos run (`make chaos`, faults `redis-stall` and `partition-api-redis`): only the
auto-pipelined hot path had a timeout; every other command (payments, the sweeper, the
admitter's reads) waited for as long as the stall lasted. The stall is real: the client reaches
the real Redis through a TCP relay (tests/support/relay.py) that stops forwarding.

A Redis restarted with its data (AOF or RDB) answers every command with LOADING until it has
read it back. Found by the chaos run (fault `redis-kill9-aof`): the hot path's auto-pipeline
raised a plain ResponseError for it, and joins and holds answered 500."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio import Redis

from flashsale.api.errors import api_error
from flashsale.config import Settings
from flashsale.waiting_room.autopipeline import AutoPipeline
from flashsale.waiting_room.redis_client import connect_redis
from tests.support import redis_server
from tests.support.relay import relayed


async def test_a_command_to_a_stalled_redis_times_out(settings: Settings) -> None:
    async with relayed(settings.redis_url, 6379) as relay:
        client = connect_redis(
            dataclasses.replace(
                settings,
                redis_url=relay.url(settings.redis_url),
                redis_command_timeout_seconds=0.5,
            ),
            cluster=False,
        )
        try:
            assert await client.ping()
            relay.stall()
            started = time.monotonic()
            with pytest.raises((redis.exceptions.TimeoutError, TimeoutError)):
                await asyncio.wait_for(client.get(f"{settings.redis_prefix}:stall"), 10)
            assert time.monotonic() - started < 2.5  # the command timeout, not some later one
        finally:
            await client.aclose(close_connection_pool=True)


# a Redis that reads its data back slowly (a delay per key) and answers LOADING meanwhile
SLOW_LOADING = ("--key-load-delay", "300", "--loading-process-events-interval-bytes", "1024")


async def test_a_redis_loading_its_data_is_an_outage_answered_503(tmp_path: Path) -> None:
    with redis_server(tmp_path, options=SLOW_LOADING) as first:
        client = Redis.from_url(first.url)
        async with client.pipeline(transaction=False) as pipe:
            for n in range(10_000):
                pipe.set(f"k{n}", "x" * 100)
            await pipe.execute()
        await client.save()
        await client.aclose()
    with redis_server(tmp_path, options=SLOW_LOADING) as again:  # 10,000 keys, 3 s to load
        client = Redis.from_url(again.url)
        hot_path = AutoPipeline.like(client, timeout=5)
        errors: list[Exception] = []
        for call in (lambda: hot_path.execute("GET", "k1"), lambda: client.get("k1")):
            with pytest.raises(redis.exceptions.BusyLoadingError) as raised:
                await call()
            errors.append(raised.value)
        for error in errors:  # the hot path's and redis-py's alike: 503, Retry-After
            answer = api_error(error)
            assert answer is not None and answer.status == 503, error
            assert answer.headers.get("Retry-After"), answer.headers
        await hot_path.aclose()
        await client.aclose()
