"""`Refreshed`: a value re-read now and then, the copy in hand served while a read fails
because PostgreSQL cannot be reached, or hangs (waiting_room/refreshed.py). The reads here are
coroutines the test controls; tests/integration/test_postgres_down.py has the real outage."""

from __future__ import annotations

import asyncio

import pytest

from flashsale.waiting_room.refreshed import Refreshed


class Source:
    """What `load` reads: the next value, an error to raise, or a gate to wait on first."""

    def __init__(self) -> None:
        self.value = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.reads = 0

    async def load(self) -> int:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_reads_once_then_again_only_when_due() -> None:
    source, clock = Source(), Ticks()
    kept = Refreshed(source.load, every=1.0, clock=clock)
    source.value = 1
    assert await kept.get() == 1
    source.value = 2
    clock.now = 0.9
    assert await kept.get() == 1 and source.reads == 1
    clock.now = 1.0
    assert await kept.get() == 2 and source.reads == 2


async def test_postgresql_unreachable_the_copy_serves_and_is_asked_again_later() -> None:
    source, clock = Source(), Ticks()
    kept = Refreshed(source.load, every=1.0, clock=clock)
    source.value = 1
    assert await kept.get() == 1
    source.error = ConnectionRefusedError("down")
    clock.now = 1.0
    assert await kept.get() == 1 and source.reads == 2
    clock.now = 1.5  # the failed read counts: the next one comes a period after it
    assert await kept.get() == 1 and source.reads == 2
    source.error, source.value = None, 3
    clock.now = 2.0
    assert await kept.get() == 3


async def test_a_read_that_hangs_is_waited_for_briefly_then_picked_up_when_it_ends() -> None:
    source, clock = Source(), Ticks()
    kept = Refreshed(source.load, every=1.0, patience=0.01, clock=clock)
    source.value = 1
    assert await kept.get() == 1
    source.gate, source.value = asyncio.Event(), 2
    clock.now = 1.0
    assert await kept.get() == 1  # the one that started the read waited `patience`
    assert await asyncio.wait_for(kept.get(), 0.001) == 1  # the others do not wait at all
    assert source.reads == 2  # and start no second read
    source.gate.set()
    await asyncio.sleep(0)
    assert await kept.get() == 2


async def test_without_a_copy_the_caller_waits_and_gets_the_error() -> None:
    source, clock = Source(), Ticks()
    kept = Refreshed(source.load, every=1.0, clock=clock)
    source.error = ConnectionRefusedError("down")
    with pytest.raises(ConnectionRefusedError):
        await kept.get()
    source.error, source.value = None, 4
    assert await kept.get() == 4  # no copy: asked again at once


async def test_any_other_error_drops_the_copy() -> None:
    source, clock = Source(), Ticks()
    kept = Refreshed(source.load, every=1.0, clock=clock)
    assert await kept.get() == 0
    source.error = LookupError("deleted")
    clock.now = 1.0
    with pytest.raises(LookupError):
        await kept.get()
    source.error = ConnectionRefusedError("down")
    with pytest.raises(ConnectionRefusedError):  # nothing in hand any more
        await kept.get()
