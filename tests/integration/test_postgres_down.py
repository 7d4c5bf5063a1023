"""PostgreSQL goes away during a sale: holds go on (the hot path needs only Redis), a payment
taken meanwhile answers 503 with Retry-After instead of a 500, and the order is confirmed once
PostgreSQL is back. Found by the chaos run (`make chaos`, fault `postgres-down-15s`): every
hold failed with a 500 a second after PostgreSQL went down, because the API re-read the sale
from PostgreSQL once a second and let the error through.

The outage is real: the services reach the real PostgreSQL through a TCP relay this test
closes, so every connection fails as it would with the server down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import SALE_TTL_S, Services
from flashsale.waiting_room.tokens import Claims, Signer
from tests.support import Clock, app_for

MakeSale = Callable[..., Awaitable[Sale]]
Admit = Callable[..., Awaitable[list[Claims]]]


class Relay:
    """A TCP relay to PostgreSQL on a port of its own; `cut` closes it and every connection
    through it, `mend` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
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


@contextlib.asynccontextmanager
async def through_relay(
    settings: Settings, redis: Redis, raw_redis: Redis, room: WaitingRoom, clock: Clock
) -> AsyncIterator[tuple[Services, Relay]]:
    url = urlsplit(settings.database_url)
    relay = Relay(url.hostname or "127.0.0.1", url.port or 5432)
    await relay.start()
    netloc = url.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    relayed = urlunsplit(url._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    pool = await asyncpg.create_pool(
        relayed,
        min_size=1,
        max_size=4,
        server_settings={"search_path": settings.database_schema},
        command_timeout=5,
        timeout=3,
    )
    try:
        sales = Sales(pool, room, clock=clock.now)
        yield Services.build(settings, redis, raw_redis, pool, room=room, sales=sales), relay
    finally:
        pool.terminate()
        with contextlib.suppress(Exception):
            await relay.cut()


async def test_holds_go_on_and_payments_answer_503_while_postgresql_is_down(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    room: WaitingRoom,
    clock: Clock,
    make_sale: MakeSale,
    admit: Admit,
    signer: Signer,
) -> None:
    async with through_relay(settings, redis, raw_redis, room, clock) as (services, relay):
        sale = await make_sale(stock=5, price_cents=1200)
        await services.purchases.stock.prewarm(sale)
        first, second = await admit(sale, 2)
        app = app_for(services)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            base = f"/api/sales/{sale.id}"

            async def hold(shopper: Claims) -> httpx.Response:
                return await client.post(
                    f"{base}/holds",
                    json={"quantity": 1},
                    headers={
                        "X-Visitor-Id": shopper.visitor,
                        "Authorization": f"Bearer {signer.sign(shopper)}",
                    },
                )

            assert (await hold(first)).status_code == 201  # the sale is now in hand

            await relay.cut()
            await asyncio.sleep(SALE_TTL_S + 0.2)  # the copy in hand is due for a re-read
            held = await hold(second)
            assert held.status_code == 201, held.text
            order_id = held.json()["id"]
            paid = await client.post(
                f"{base}/orders/{order_id}/pay",
                headers={"X-Visitor-Id": second.visitor},
                json={"payment_token": "tok_approve"},
            )
            assert paid.status_code == 503, paid.text
            assert paid.json()["error"]["code"] == "confirmation_pending"
            assert int(paid.headers["Retry-After"]) >= 1

            await relay.mend()
            # the payment went through: once the hold is due, the sweep asks the provider and
            # confirms the order
            clock.advance(max(sale.hold_seconds, 2 * services.purchases.payments.timeout_s) + 1)
            counts = await services.purchases.sweep(sale)
            assert counts["confirmed"] == 1, counts
            again = await client.post(
                f"{base}/orders/{order_id}/pay",
                headers={"X-Visitor-Id": second.visitor},
                json={"payment_token": "tok_approve"},
            )
            assert again.status_code == 200 and again.json()["status"] == "confirmed", again.text
