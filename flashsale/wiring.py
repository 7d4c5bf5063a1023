"""Composes the layers: connections to Redis and PostgreSQL, the core's services on them, and
the processes built from those (the API app, the operator). The command line sits on top of
this module; nothing below it imports it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from flashsale.api.app import create_app
from flashsale.config import Settings
from flashsale.logs import setup_logging
from flashsale.waiting_room.autopipeline import close_shared
from flashsale.waiting_room.db import connect_pool
from flashsale.waiting_room.redis_client import connect_redis, is_cluster
from flashsale.waiting_room.services import Services


@contextlib.asynccontextmanager
async def opened(settings: Settings, *, pool_size: int = 10) -> AsyncIterator[Services]:
    """Connections and the services on them, for as long as a process runs; closed on exit."""
    cluster = await is_cluster(settings)
    redis = connect_redis(settings, cluster=cluster)
    raw_redis = connect_redis(settings, cluster=cluster, decode=False)
    try:
        pool = await connect_pool(settings, max_size=pool_size)
    except BaseException:
        await redis.aclose()
        await raw_redis.aclose()
        raise
    try:
        yield Services.build(settings, redis, raw_redis, pool)
    finally:
        await close_shared()
        await pool.close()
        await redis.aclose()
        await raw_redis.aclose()


def api_app() -> Starlette:
    """The API as uvicorn runs it (`flashsale.wiring:api_app`, a factory): settings and logs
    from the environment, the services opened by the app's lifespan."""
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_json)
    return create_app(settings, lambda: opened(settings))
