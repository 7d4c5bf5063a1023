"""A Redis that stops answering (stalled with SIGSTOP, or across a partition) makes FlashSale's
Redis commands fail after FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS instead of waiting until TCP
gives up. Found by the chaos run (`make chaos`, faults `redis-stall` and
`partition-api-redis`): only the auto-pipelined hot path had a timeout; every other command
(payments, the sweeper, the admitter's reads) waited for as long as the stall lasted.

The stall is real: the client reaches the real Redis through a TCP relay this test stops
forwarding, as a stalled server or a partition would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from urllib.parse import urlsplit

import pytest
import redis.exceptions

from flashsale.config import Settings
from flashsale.waiting_room.redis_client import connect_redis


class StallingRelay:
    """A TCP relay to Redis; `stall` stops it forwarding anything, connections stay open."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.stalled = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if self.stalled.is_set():
                        await asyncio.Event().wait()  # swallowed: never arrives
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_command_to_a_stalled_redis_times_out(settings: Settings) -> None:
    url = urlsplit(settings.redis_url)
    relay = StallingRelay(url.hostname or "127.0.0.1", url.port or 6379)
    port = await relay.start()
    relayed = url._replace(netloc=f"127.0.0.1:{port}").geturl()
    client = connect_redis(
        dataclasses.replace(settings, redis_url=relayed, redis_command_timeout_seconds=0.5),
        cluster=False,
    )
    try:
        assert await client.ping()
        relay.stalled.set()
        started = time.monotonic()
        with pytest.raises((redis.exceptions.TimeoutError, TimeoutError)):
            await asyncio.wait_for(client.get(f"{settings.redis_prefix}:stall"), 10)
        assert time.monotonic() - started < 2.5  # the command timeout, not some later one
    finally:
        relay.close()
        await client.aclose(close_connection_pool=True)
