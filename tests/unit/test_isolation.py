"""Each sale's share of a background tick on its own (waiting_room/isolation.py): a slow sale
never holds up the tick nor the others, a failing one is counted by sale, and a sale still
busy from an earlier tick is not started twice."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from flashsale.waiting_room.isolation import FAILED, PerSale, guarded


def failures(role: str, sale: str) -> float:
    return (
        REGISTRY.get_sample_value("flashsale_sale_failures_total", {"role": role, "sale": sale})
        or 0.0
    )


async def test_a_slow_or_failing_sale_holds_up_no_other() -> None:
    per_sale = PerSale("unit-test", 1.0, patience=0.2)
    started: list[str] = []

    async def quick(sale: str) -> str:
        started.append(sale)
        return f"{sale} done"

    async def slow() -> str:
        started.append("slow")
        await asyncio.sleep(5)
        return "never"

    async def broken() -> str:
        raise ConnectionError("its shard is down")

    before = {s: failures("unit-test", s) for s in ("slow", "broken", "a")}
    began = time.monotonic()
    results = await per_sale.run(
        {"a": lambda: quick("a"), "slow": slow, "broken": broken, "b": lambda: quick("b")}
    )
    assert time.monotonic() - began < 0.5  # the patience, not the slow sale's time
    assert results == {"a": "a done", "b": "b done"}
    assert failures("unit-test", "broken") == before["broken"] + 1
    # the slow sale runs on alone: the next tick does not start it again
    assert per_sale.busy("slow") and not per_sale.busy("a")
    assert await per_sale.run({"slow": slow, "a": lambda: quick("a")}) == {"a": "a done"}
    assert started.count("slow") == 1
    # until its timeout: then it is given up, counted, and may start again
    await asyncio.sleep(1.0)
    assert not per_sale.busy("slow")
    assert failures("unit-test", "slow") == before["slow"] + 1
    assert failures("unit-test", "a") == before["a"]
    await per_sale.close()


async def test_guarded_returns_the_result_or_failed() -> None:
    async def fine() -> int:
        return 7

    async def boom() -> int:
        raise RuntimeError("no")

    assert await guarded("unit-test", "g", 1.0, fine) == 7
    assert await guarded("unit-test", "g", 1.0, boom) is FAILED


async def test_closing_cancels_what_still_runs() -> None:
    per_sale = PerSale("unit-test", 10.0, patience=0.05)
    cancelled = asyncio.Event()

    async def endless() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    await per_sale.run({"endless": endless})
    assert per_sale.busy("endless")
    await per_sale.close()
    assert cancelled.is_set() and not per_sale.busy("endless")
