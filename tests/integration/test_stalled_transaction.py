"""A process that stalls inside a transaction (SIGSTOP, a frozen VM) must not hold the sale's
inventory row for as long as the stall lasts: PostgreSQL ends its session after
IDLE_IN_TRANSACTION_S and its locks go. Found by the chaos run (`make chaos`, fault
`persister-kill9-backlog`): a persister stalled while writing a batch held the inventory row,
and every payment of the sale waited on it, until the API's readiness failed."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.db import IDLE_IN_TRANSACTION_S, connect_pool


async def test_a_transaction_left_idle_loses_its_locks(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    assert 0 < IDLE_IN_TRANSACTION_S <= 30
    await pool.execute("CREATE TABLE IF NOT EXISTS stall_probe (id int PRIMARY KEY)")
    await pool.execute("INSERT INTO stall_probe VALUES (1) ON CONFLICT DO NOTHING")
    stalled = await connect_pool(settings, max_size=1, idle_in_transaction_s=0.5)
    try:
        conn = await stalled.acquire()
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT id FROM stall_probe WHERE id = 1 FOR UPDATE")
        # the process stalls here; another one wants the row
        started = time.monotonic()
        async with pool.acquire() as other, other.transaction():
            await other.execute("SET LOCAL lock_timeout = '10s'")
            await other.execute("SELECT id FROM stall_probe WHERE id = 1 FOR UPDATE")
        assert time.monotonic() - started < 5  # the stalled session's lock went
        await asyncio.sleep(0.1)
        try:
            await conn.execute("SELECT 1")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # its session was ended: the process retries when it wakes
        else:
            raise AssertionError("the stalled session survived")
        await stalled.release(conn)
    finally:
        stalled.terminate()
        await pool.execute("DROP TABLE IF EXISTS stall_probe")
