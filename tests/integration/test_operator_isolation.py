"""The operator's tick for one FlashSale whose Redis does not answer (its shard down) fails
alone: logged and counted for that sale, within the sale timeout, and writes no half-made
status; kopf's other timers (one per FlashSale) never wait for it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import asyncpg
import kopf
from prometheus_client import REGISTRY

from flashsale.config import Settings
from flashsale.operator.handlers import FlashSaleOperator
from flashsale.waiting_room.redis_client import connect_redis
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Signer
from tests.support import free_port

MakeSale = Callable[..., Awaitable[Sale]]


async def test_a_tick_whose_redis_is_down_is_counted_for_its_sale(
    settings: Settings, pool: asyncpg.Pool, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    down = replace(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        redis_command_timeout_seconds=0.5,
        sale_timeout_seconds=3.0,
    )
    redis = connect_redis(down, cluster=False)
    raw_redis = connect_redis(down, cluster=False, decode=False)
    room = WaitingRoom(redis, down, Signer(down.signing_keys()))
    services = Services.build(down, redis, raw_redis, pool, room=room, sales=Sales(pool, room))
    operator = FlashSaleOperator(services, tick_seconds=1.0)
    patch = kopf.Patch()
    labels = {"role": "operator", "sale": sale.id}
    before = REGISTRY.get_sample_value("flashsale_sale_failures_total", labels) or 0.0
    started = time.monotonic()
    try:
        await operator.on_tick(
            name="spring-drop",
            namespace="shop",
            uid="uid-1",
            spec={},
            meta={},
            status={"saleId": sale.id},
            patch=patch,
            body=kopf.Body({}),
        )
    finally:
        await redis.aclose()
        await raw_redis.aclose()
    assert time.monotonic() - started < down.sale_timeout_seconds + 1
    assert REGISTRY.get_sample_value("flashsale_sale_failures_total", labels) == before + 1
    assert not patch.get("status")  # nothing half-made written
