"""A value read from PostgreSQL now and then, and served from memory in between.

The hot path needs only Redis, but a few things it uses are PostgreSQL's to say: a sale's
definition (the API), the list of live sales (the admitter, the persister). Read inline, each
of them makes the hot path wait for PostgreSQL whenever a re-read is due, and fail or hang
while PostgreSQL is down or stalled, although the copy in hand would have done. `Refreshed`
reads in a task of its own when the copy is due, waits for that read only briefly, and serves
the copy in hand while the read fails or hangs; the failure is logged once per attempt, and
the next attempt comes `every` seconds later, not at every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from flashsale.waiting_room.db import UNAVAILABLE

T = TypeVar("T")
log = logging.getLogger(__name__)

# how long a caller that starts a re-read waits for it before going on with the copy in hand
# (PostgreSQL answers in about a millisecond when it answers at all)
PATIENCE_S = 0.25


class Refreshed(Generic[T]):
    """`await get()`: the value, re-read by `load` when older than `every` seconds.

    Without a copy in hand the caller waits for the read and gets its error. With one, a read
    that fails because PostgreSQL cannot be reached (`db.UNAVAILABLE`), or that takes longer
    than `patience`, leaves the copy in service; any other error (the sale was deleted, a bug)
    is raised and drops the copy."""

    def __init__(
        self,
        load: Callable[[], Awaitable[T]],
        *,
        every: float,
        patience: float = PATIENCE_S,
        what: str = "value",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load = load
        self.every = every
        self.patience = patience
        self.what = what
        self.clock = clock
        self._value: T | None = None
        self._has_value = False
        self._read_at = float("-inf")  # when the last read started
        self._reading: asyncio.Future[T] | None = None

    @property
    def due(self) -> bool:
        return self.clock() - self._read_at >= self.every

    async def get(self) -> T:
        if self._has_value and not self.due and self._reading is None:
            return self._value  # type: ignore[return-value]
        waited = False
        if self._reading is None and (self.due or not self._has_value):
            self._read_at = self.clock()
            self._reading = asyncio.ensure_future(self.load())
            # a read that ends while nobody waits has its error taken here, never lost
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
            waited = True
        reading = self._reading
        if reading is not None and not reading.done():
            if not self._has_value:
                await asyncio.wait({reading})
            elif waited:  # only the caller that started the read waits, and briefly
                await asyncio.wait({reading}, timeout=self.patience)
        if reading is not None and reading.done():
            self._reading = None
            self._take(reading)
        if not self._has_value:  # the read ended without a value (and raised); never here
            raise LookupError(f"no {self.what} read")
        return self._value  # type: ignore[return-value]

    def _take(self, reading: asyncio.Future[T]) -> None:
        if reading.cancelled():
            return
        exc = reading.exception()
        if exc is None:
            self._value, self._has_value = reading.result(), True
            return
        if isinstance(exc, UNAVAILABLE) and self._has_value:
            log.warning(
                "PostgreSQL did not answer; serving the %s in hand",
                self.what,
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            return
        self._value, self._has_value = None, False
        raise exc
