"""PostgreSQL connections and the migration runner.

Migrations are plain SQL files applied in name order, each once, inside one transaction under
an advisory lock, so concurrent `flashsale migrate` runs (a Helm hook and a developer, say) are
safe and a second run is a no-op.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from flashsale.config import Settings

log = logging.getLogger(__name__)
MIGRATION_LOCK = 0x0F1A5A1E  # advisory lock id shared by every migrator

# a connection of its own or one acquired from a pool: the queries take either
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


# what a query raises while PostgreSQL cannot be reached (down, restarting, a broken
# connection, a stalled server timing out), as opposed to what it says about the data
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)


def one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a query cannot miss (RETURNING, or a row this transaction holds locked)."""
    if row is None:
        raise LookupError("a row that must exist is missing")
    return row


# A FlashSale transaction never waits on its client: a session idle inside a transaction this
# long belongs to a process that stalled (SIGSTOP, a frozen VM, a partition) while holding row
# locks, the sale's inventory row among them, which would stop every payment of the sale for as
# long as the stall lasts. PostgreSQL ends such a session, its locks go, its work is rolled
# back, and the process retries when it wakes (the persister from its pending entries).
IDLE_IN_TRANSACTION_S = 10.0


async def connect_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    idle_in_transaction_s: float = IDLE_IN_TRANSACTION_S,
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={
            "search_path": settings.database_schema,
            "application_name": "flashsale",
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_s * 1000)),
        },
        command_timeout=30,
    )


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files(__package__).joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the versions applied now."""
    conn = await asyncpg.connect(settings.database_url)
    applied_now: list[str] = []
    try:
        schema = settings.database_schema
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied_now.append(version)
                log.info("applied migration", extra={"version": version})
    finally:
        await conn.close()
    return applied_now
