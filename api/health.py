"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flashsale.api.metrics import render_metrics
from flashsale.waiting_room.services import Services

READY_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    """The process is alive and serving; says nothing about its dependencies on purpose, so a
    Redis outage does not make Kubernetes restart every pod."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
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
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    return render_metrics(request)
