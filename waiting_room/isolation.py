"""One sale's trouble stays that sale's: the background loops (admitter, persister, operator)
run each sale's share of a tick on its own, under a timeout.

On a Redis Cluster each sale lives on one shard; a shard that is down fails that sale's
commands at once, and one that is slow (or a primary that died with no replica yet promoted)
leaves them waiting. Either way the other sales' admission, orders and expiries go on: every
sale's work is a task of its own, bounded by FLASHSALE_SALE_TIMEOUT_SECONDS, whose failure is
logged with the sale and counted in `flashsale_sale_failures{role, sale}`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")

FAILURES = Counter(
    "flashsale_sale_failures",
    "A sale's share of an admitter, persister or operator tick that failed or timed out "
    "(its Redis shard down or slow, PostgreSQL refusing, ...); the other sales went on",
    ["role", "sale"],
)

# How long a tick waits for its slowest sale before going on without it (the sale's task
# runs on, up to its timeout, and the next ticks skip that sale until it ends).
PATIENCE_S = 1.0


class Failed:
    """What `guarded` returns for work that failed (already logged and counted)."""


FAILED = Failed()


async def guarded(
    role: str, sale: str, limit_s: float, work: Callable[[], Awaitable[T]]
) -> T | Failed:
    """`work()` within `limit_s` seconds; a failure or a timeout is logged with the sale,
    counted, and returned as FAILED instead of raised."""
    try:
        async with asyncio.timeout(limit_s):
            return await work()
    except TimeoutError:
        FAILURES.labels(role, sale).inc()
        log.warning(
            "%s: sale %s took longer than %g s; given up for this tick",
            role,
            sale,
            limit_s,
            extra={"sale": sale, "role": role},
        )
    except Exception as exc:
        FAILURES.labels(role, sale).inc()
        log.warning(
            "%s: sale %s failed: %r",
            role,
            sale,
            exc,
            extra={"sale": sale, "role": role},
            exc_info=True,
        )
    return FAILED


class PerSale:
    """Each sale's share of a loop's tick as a task of its own, one at a time per sale.

    `run` starts the work of every sale not still busy with an earlier tick's, waits for it
    up to `patience`, and returns the results that came in; a slow sale's task goes on alone
    (bounded by `timeout`), so it never holds up the loop or the other sales."""

    def __init__(self, role: str, timeout: float, patience: float = PATIENCE_S) -> None:
        self.role = role
        self.timeout = timeout
        self.patience = patience
        self._running: dict[str, asyncio.Task[Any]] = {}

    def busy(self, sale: str) -> bool:
        """Whether the sale's work of an earlier tick is still running."""
        return sale in self._running

    async def run(self, work: Mapping[str, Callable[[], Awaitable[T]]]) -> dict[str, T]:
        started: dict[str, asyncio.Task[T | Failed]] = {}
        for sale, make in work.items():
            if sale in self._running:
                continue
            task = asyncio.ensure_future(guarded(self.role, sale, self.timeout, make))
            task.add_done_callback(functools.partial(self._ended, sale))
            self._running[sale] = started[sale] = task
        if started:
            await asyncio.wait(started.values(), timeout=self.patience)
        results: dict[str, T] = {}
        for sale, task in started.items():
            if task.done() and not task.cancelled():
                result = task.result()
                if not isinstance(result, Failed):
                    results[sale] = result
        return results

    def _ended(self, sale: str, task: asyncio.Task[Any]) -> None:
        if self._running.get(sale) is task:
            del self._running[sale]

    async def close(self) -> None:
        """Cancel the work still running (at shutdown) and wait for it to end."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
