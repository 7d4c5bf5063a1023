"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio

from flashsale.api.front import Reply, endpoint, json_reply
from flashsale.api.inputs import Incoming
from flashsale.api.metrics import metrics_text

READY_TIMEOUT_S = 2.0


@endpoint()
async def healthz(req: Incoming) -> Reply:
    """The process is alive and serving; says nothing about its dependencies on purpose, so a
    Redis outage does not make Kubernetes restart every pod."""
    return json_reply({"status": "ok"})


@endpoint()
async def readyz(req: Incoming) -> Reply:
    services = req.services
    checks: dict[str, str] = {}

    async def redis_ok() -> None:
        await services.redis.ping()

    async def postgres_ok() -> None:
        await services.pool.fetchval("SELECT 1")

    for name, check in (("redis", redis_ok), ("postgres", postgres_ok)):
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason is reported
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_reply(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        200 if ready else 503,
    )


@endpoint()
async def metrics(req: Incoming) -> Reply:
    body, content_type = metrics_text()
    return Reply(200, body, [(b"content-type", content_type.encode())])
