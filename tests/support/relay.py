"""A real outage of a real server, for tests in process: the services reach PostgreSQL (or
Redis) through a TCP relay on a port of its own, which the test cuts (every connection through
it dies and new ones are refused, as with the server down), stalls (connections stay open and
bytes stop flowing, as with the server stopped by SIGSTOP), and mends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.payments import GuardedProvider
from flashsale.waiting_room.redis_client import RedisClient
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from tests.support import Clock


class Relay:
    """A TCP relay to `host:port` on a port of its own: `cut` closes it and every connection
    through it, `mend` listens again on the same port; `stall` holds every byte (new
    connections are accepted and hang too), `resume` lets them through again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def url(self, url: str) -> str:
        """`url` (postgresql://... or redis://...) pointed at the relay instead."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    async def mend(self) -> None:
        await self.start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()


@contextlib.asynccontextmanager
async def relayed(url: str, default_port: int) -> AsyncIterator[Relay]:
    """A started relay to the server `url` names; always cut at the end."""
    parts = urlsplit(url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or default_port)
    await relay.start()
    try:
        yield relay
    finally:
        relay.resume()
        with contextlib.suppress(Exception):
            await relay.cut()


@contextlib.asynccontextmanager
async def through_relay(
    settings: Settings,
    redis: RedisClient,
    raw_redis: RedisClient,
    room: WaitingRoom,
    clock: Clock,
    *,
    command_timeout: float = 5,
    payments: GuardedProvider | None = None,
) -> AsyncIterator[tuple[Services, Relay]]:
    """Services whose PostgreSQL is reached through a relay (Redis directly)."""
    async with relayed(settings.database_url, 5432) as relay:
        pool = await asyncpg.create_pool(
            relay.url(settings.database_url),
            min_size=1,
            max_size=4,
            server_settings={"search_path": settings.database_schema},
            command_timeout=command_timeout,
            timeout=3,
        )
        try:
            sales = Sales(pool, room, clock=clock.now)
            services = Services.build(
                settings, redis, raw_redis, pool, room=room, sales=sales, payments=payments
            )
            yield services, relay
        finally:
            relay.resume()
            pool.terminate()
