"""A sale's slot migrated to another primary mid-sale (CLUSTER SETSLOT ... MIGRATING /
IMPORTING, MIGRATE, then SETSLOT ... NODE), as `redis-cli --cluster reshard` does it, while
shoppers poll and hold: the hot path meets ASK (a key already moved: followed with ASKING),
TRYAGAIN (a script whose keys are split between the two nodes: retried) and finally MOVED
(followed, and the slot map refreshed), and every request succeeds."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.redis_client import node_of, primaries
from flashsale.waiting_room.tokens import Signer
from tests.support import Clock, make_admit, only, sale_body
from tests.support.cluster import (
    LocalCluster,
    command_stat,
    private_cluster,
    sale_id_on,
    services_on,
)


def migrate(cluster: LocalCluster, slot: int, source: int, target: int, keys: list[str]) -> None:
    """MIGRATE `keys` of the slot from the source node to the target."""
    if keys:
        cluster.cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *keys)


async def test_a_slot_migrated_mid_sale_keeps_the_hot_path_working(
    settings: Settings, pool: asyncpg.Pool, clock: Clock, signer: Signer
) -> None:
    with private_cluster() as cluster:
        async with services_on(cluster.url, settings, pool, clock) as services:
            nodes = await primaries(services.redis)
            source, target = nodes[0], nodes[2]
            sale = await services.sales.create(
                sale_body(
                    id=await sale_id_on(services, source),
                    stock=100,
                    per_shopper_limit=1,
                    admission={**sale_body()["admission"], "max_active": 100},
                )
            )
            keys = services.room.keys(sale.id)
            slot = services.redis.keyslot(keys.meta)
            shoppers = await make_admit(services.room, clock, signer)(sale, 60)
            for claims in shoppers[:20]:
                await services.purchases.hold(sale, claims, quantity=1)
            asked_before = await command_stat(target, "asking")
            refused_before = await command_stat(source, "evalsha", "rejected_calls")

            src, dst = cluster.port_of(source), cluster.port_of(target)
            src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)
            cluster.cli(dst, "cluster", "setslot", str(slot), "importing", src_id)
            cluster.cli(src, "cluster", "setslot", str(slot), "migrating", dst_id)
            # the room's settings move first: reading the room now meets ASK
            migrate(cluster, slot, src, dst, [keys.meta, keys.batches])

            results: list[Any] = []

            async def shop() -> None:  # polls and holds while the slot moves
                for claims in shoppers[20:]:
                    results.append(await services.room.poll(sale.id, claims))
                    results.append(await services.purchases.hold(sale, claims, quantity=1))

            shopping = asyncio.create_task(shop())
            await asyncio.sleep(0.3)
            rest = cluster.cli(src, "cluster", "getkeysinslot", str(slot), "1000").split()
            migrate(cluster, slot, src, dst, rest)
            for port in cluster.ports[:3]:  # the slot is the target's now, everywhere
                cluster.cli(port, "cluster", "setslot", str(slot), "node", dst_id)
            await asyncio.wait_for(shopping, 30)

            # every poll and hold during the move succeeded; ASK was followed with ASKING
            assert len(results) == 2 * 40
            assert all(r.status.state.value == "admitted" for r in results[::2])
            assert all(r.created for r in results[1::2])
            assert await command_stat(target, "asking") > asked_before
            assert (
                await command_stat(source, "evalsha", "rejected_calls") > refused_before
            )  # TRYAGAIN
            assert await node_of(services.redis, keys.meta) == target
            # and the sale is whole on its new node: 60 holds, none lost, none doubled
            inventory = await services.redis.hgetall(keys.inventory)
            assert (int(inventory["held"]), int(inventory["avail"])) == (60, 40)
            assert cluster.cli(src, "cluster", "countkeysinslot", str(slot)) == "0"
            persister = Persister(
                services.redis,
                pool,
                only(services.sales, sale.id),
                services.purchases,
                consumer="migration",
            )
            assert await persister.drain(sale) == 60
            assert (await services.stock.reconcile(sale)).ok
