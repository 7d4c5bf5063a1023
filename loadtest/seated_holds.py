"""`python -m loadtest.seated_holds`: how fast parties are seated, and whether they sit together.

In process, against the real Redis and PostgreSQL (REDIS_URL / DATABASE_URL, or whatever
`scripts/ensure-services.sh` finds), with a schema and key prefix of its own removed at the end:

- a seated sale per venue (`--venues`, e.g. `1500x25`: 1,500 seats in rows of 25), pre-warmed;
- `--parties` shoppers, admitted directly in Redis (this measures holds, not the waiting room),
  each asking for a party of 1-4 through `Purchases.hold`, `--concurrency` at a time, until the
  venue is full; a share of them (`--cancel-share`) cancels its hold at once, so seats come
  back while others choose (the race that used to seat a party apart);
- measured: holds per second (successful holds over the wall time), hold-script calls per party
  (retries), refusals by code, and, replaying the sale's stream in the order Redis applied it,
  the parties seated apart while some row still had a free run long enough for them.

The last line of stdout is JSON with the figures per venue. Run it on two versions of the code in
one sitting (e.g. `PYTHONPATH=/tmp/old python -m loadtest.seated_holds`) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis

from flashsale.config import Settings
from flashsale.waiting_room.autopipeline import close_shared
from flashsale.waiting_room.db import connect_pool, migrate
from flashsale.waiting_room.purchase import Held, PurchaseRefused, Purchases, layout_of
from flashsale.waiting_room.redis_client import text_map
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import ADMISSION, Claims, Signer
from loadtest.common import ensure_services, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest.seated_holds", description=__doc__.split("\n")[0])
    p.add_argument("--venues", default="1500x25,20000x40", help="SEATSxROW_LENGTH, comma-separated")
    p.add_argument("--concurrency", type=int, default=200, help="holds in flight at once")
    p.add_argument("--cancel-share", type=float, default=0.2, help="share that cancels at once")
    p.add_argument("--rounds", type=int, default=3, help="runs per venue (the median is kept)")
    p.add_argument("--seed", type=int, default=14)
    return p.parse_args(argv)


def seat_map(seats: int, row: int) -> dict[str, Any]:
    rows = [min(row, seats - start) for start in range(0, seats, row)]
    return {
        "sections": [
            {"name": "Main", "rows": [{"name": str(i + 1), "seats": n} for i, n in enumerate(rows)]}
        ]
    }


def free_runs(layout: Any, taken: set[int]) -> int:
    """The longest run of free seats in one row."""
    best = 0
    for row in layout.rows:
        run = 0
        for seat in row.seats:
            run = 0 if seat in taken else run + 1
            best = max(best, run)
    return best


def together(layout: Any, seats: list[int]) -> bool:
    rows = {layout.row_of(s) for s in seats}
    return len(rows) == 1 and max(seats) - min(seats) == len(seats) - 1


async def one_run(
    settings: Settings,
    redis: Redis,
    raw: Redis,
    pool: asyncpg.Pool,
    venue: tuple[int, int],
    args: argparse.Namespace,
    round_no: int,
) -> dict[str, Any]:
    clock = time.time
    room = WaitingRoom(redis, settings, Signer(settings.signing_keys()), clock=clock)
    sales = Sales(pool, room)
    services = Services.build(settings, redis, raw, pool, room=room, sales=sales)
    purchases: Purchases = services.purchases
    seats, row = venue
    now = datetime.now(UTC)
    sale: Sale = await sales.create(
        {
            "id": f"bench-{secrets.token_hex(4)}",
            "name": "seated holds",
            "seat_map": seat_map(seats, row),
            "opens_at": (now - timedelta(minutes=1)).isoformat(),
            "closes_at": (now + timedelta(hours=2)).isoformat(),
            "per_shopper_limit": 4,
            "hold_seconds": 600,
            "admission": {
                "batch_size": 1000,
                "batch_interval_ms": 1000,
                "max_active": 100_000,
                "admission_ttl_seconds": 3600,
                "abandon_after_seconds": 60,
            },
        }
    )
    await purchases.stock.prewarm(sale)
    layout = layout_of(sale)
    rng = random.Random(args.seed * 1000 + round_no)
    sizes = [rng.randint(1, 4) for _ in range(seats)]  # more demand than seats
    keys = purchases.keys(sale.id)
    expires = (time.time() + 3600) * 1000
    await redis.zadd(keys.active, {str(j): expires for j in range(len(sizes))})
    crowd = [Claims(ADMISSION, sale.id, f"p{j}", j, expires / 1000) for j in range(len(sizes))]

    script = purchases.room.scripts.hold
    calls = Counter[str]()
    original = script.__call__

    class Counted:
        async def __call__(self, **kw: Any) -> Any:
            calls["hold_script"] += 1
            return await original(**kw)

    purchases.room.scripts.hold = Counted()  # type: ignore[assignment]
    outcomes = Counter[str]()
    gate = asyncio.Semaphore(args.concurrency)

    async def party(claims: Claims, size: int, cancel: bool) -> None:
        async with gate:
            try:
                held: Held = await purchases.hold(sale, claims, quantity=size)
            except PurchaseRefused as exc:
                outcomes[exc.code] += 1
                return
            outcomes["held"] += 1
            if cancel:
                await purchases.cancel(sale, claims.visitor, held.order["id"])
                outcomes["cancelled"] += 1

    started = time.perf_counter()
    await asyncio.gather(
        *(party(c, s, rng.random() < args.cancel_share) for c, s in zip(crowd, sizes, strict=True))
    )
    elapsed = time.perf_counter() - started

    # replay in Redis's order: was a party seated apart while a long enough run was free?
    taken: set[int] = set()
    by_order: dict[str, list[int]] = {}
    apart = apart_avoidable = 0
    for _, entry in await redis.xrange(keys.orders_stream) or []:
        fields = text_map(entry or {})
        if fields["type"] == "hold":
            chosen = [int(s) for s in fields["seats"].split(",") if s]
            if not together(layout, chosen):
                apart += 1
                if free_runs(layout, taken) >= len(chosen):
                    apart_avoidable += 1
            taken |= set(chosen)
            by_order[fields["order"]] = chosen
        elif fields["type"] == "release":
            taken -= set(by_order.get(fields["order"], []))
    async for key in redis.scan_iter(match=keys.pattern, count=1000):
        await redis.unlink(key)
    return {
        "venue": f"{seats}x{row}",
        "holds": outcomes["held"],
        "holds_per_s": round(outcomes["held"] / elapsed, 1),
        "script_calls_per_party": round(calls["hold_script"] / len(sizes), 2),
        "refusals": {k: v for k, v in outcomes.items() if k not in ("held", "cancelled")},
        "apart": apart,
        "apart_while_a_run_was_free": apart_avoidable,
        "seconds": round(elapsed, 2),
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    urls = ensure_services()
    run = f"{os.getpid()}{secrets.token_hex(2)}"
    settings = Settings.from_env(
        redis_url=urls["REDIS_URL"],
        database_url=urls["DATABASE_URL"],
        redis_prefix=f"seatbench{run}",
        database_schema=f"flashsale_seatbench_{run}",
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
    )
    await migrate(settings)
    pool = await connect_pool(settings, max_size=20)

    def client(**options: Any) -> Redis:
        return Redis(
            connection_pool=BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=200, timeout=30, **options
            )
        )

    redis, raw = client(decode_responses=True), client()
    results: dict[str, Any] = {}
    try:
        for text in args.venues.split(","):
            seats, row = (int(x) for x in text.split("x"))
            runs = []
            for round_no in range(args.rounds):
                result = await one_run(settings, redis, raw, pool, (seats, row), args, round_no)
                log(json.dumps(result))
                runs.append(result)
            runs.sort(key=lambda r: r["holds_per_s"])
            median = runs[len(runs) // 2]
            results[text] = {
                **median,
                "apart_while_a_run_was_free_total": sum(
                    r["apart_while_a_run_was_free"] for r in runs
                ),
            }
    finally:
        await close_shared()
        await redis.aclose()
        await raw.aclose()
        await pool.close()
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
        finally:
            await conn.close()
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
