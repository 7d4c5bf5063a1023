"""What the operator's liveness endpoint reports: kopf's `/healthz` answers with the results of
the `@kopf.on.probe` handlers below, one per store the operator works on.

A liveness probe restarts the container when it fails, so it must fail only where a restart
helps. An outage of Redis or PostgreSQL is not such a case: a new operator process would find
them just as unreachable, and Kubernetes' growing restart back-off (up to 5 minutes) would
then delay the recovery after they come back, while the running operator retries on its next
tick. So the probes report each store's state (`{"ok": true, "ms": 0.4}` or `{"ok": false,
"error": "connection refused"}`) for people and dashboards, log a warning, and never fail the
endpoint on an outage. What a restart does fix, kopf's event loop stuck or dead, shows as the
endpoint not answering at all, which is what the chart's probes (on `/healthz`) catch.

Each check is bounded by PROBE_TIMEOUT_SECONDS, so a store that does not answer (a dropped
packet, not a refused connection) cannot make the endpoint miss the kubelet's `timeoutSeconds`
(the chart gives 5 s; kopf runs the probes one after the other and caches them for 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import kopf

from flashsale.logs import reason

if TYPE_CHECKING:
    from flashsale.waiting_room.services import Services

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 1.0


async def probe(store: str, check: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """{"ok": true, "ms": latency} or {"ok": false, "error": why}; never raises for an outage."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await check()
    except Exception as error:
        why = reason(error)
        log.warning("%s does not answer the liveness probe", store, extra={"error": why})
        return {"ok": False, "error": why}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def register(registry: kopf.OperatorRegistry, services: Services) -> None:
    """The probes of the stores, as `/healthz` keys "redis" and "postgresql". PERMANENT: a
    probe that raises anyway (a bug) fails the endpoint at once instead of being retried by
    kopf for a minute."""

    async def redis(**_: Any) -> dict[str, Any]:
        return await probe("Redis", services.redis.ping)

    async def postgresql(**_: Any) -> dict[str, Any]:
        return await probe("PostgreSQL", lambda: services.pool.execute("SELECT 1"))

    for handler in (redis, postgresql):
        kopf.on.probe(registry=registry, id=handler.__name__, errors=kopf.ErrorsMode.PERMANENT)(
            handler
        )
