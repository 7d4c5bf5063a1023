"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from flashsale.api.front import Reply, endpoint, json_reply
from flashsale.api.inputs import Incoming
from flashsale.api.metrics import metrics_text

# each dependency is asked at once, in parallel, for at most this long: well inside the
# chart's readinessProbe timeoutSeconds (3) and HAProxy's `timeout check` (5s)
READY_TIMEOUT_S = 2.0


@endpoint()
async def healthz(req: Incoming) -> Reply:
    """The process is alive and serving; says nothing about its dependencies on purpose, so a
    Redis outage does not make Kubernetes restart every pod."""
    return json_reply({"status": "ok"})


async def _check(probe: Callable[[], Awaitable[object]]) -> str:
    try:
        await asyncio.wait_for(probe(), READY_TIMEOUT_S)
    except Exception as exc:  # any failure is the answer; its kind is reported
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@endpoint()
async def readyz(req: Incoming) -> Reply:
    """Ready means: this process can serve the hot path, so it needs Redis, and only Redis.

    Joins, polls, holds, the waiting page and a payment's refusal (503 with Retry-After) need
    nothing else; orders reach PostgreSQL through the stream, which the persister drains once
    it is back. A process that cannot reach Redis is useless and is taken out of service (503).
    PostgreSQL is asked too and reported, but its absence leaves the process in service
    (200, status `degraded`): every pod shares the one PostgreSQL, so taking them all out of
    the load balancer would only turn the requests that could be served into 503s."""
    services = req.services
    redis, postgres = await asyncio.gather(
        _check(services.redis.ping), _check(lambda: services.pool.fetchval("SELECT 1"))
    )
    if redis != "ok":
        status, code = "not_ready", 503
    else:
        status, code = ("ready" if postgres == "ok" else "degraded"), 200
    return json_reply({"status": status, "checks": {"redis": redis, "postgres": postgres}}, code)


@endpoint()
async def metrics(req: Incoming) -> Reply:
    body, content_type = metrics_text()
    return Reply(200, body, [(b"content-type", content_type.encode())])
