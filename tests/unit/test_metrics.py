"""The API's metric tallies (api/metrics.py) write what prometheus_client's own calls would,
once per event-loop turn."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from flashsale.api.metrics import SECONDS_BUCKETS, Tally

Samples = list[tuple[str, tuple[tuple[str, str], ...], float]]


def samples(registry: CollectorRegistry) -> Samples:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")  # when the child was made: differs by a moment
    )


def pair(kind: Any) -> tuple[CollectorRegistry, Any, Tally, CollectorRegistry]:
    """A reference child observed directly (in its registry), and a tally of a twin (in
    another)."""
    options = {"buckets": SECONDS_BUCKETS} if kind is Histogram else {}
    reference, tallied = CollectorRegistry(), CollectorRegistry()
    direct = kind("m", "m", ["route"], registry=reference, **options).labels("/x")
    tally = Tally(kind("m", "m", ["route"], registry=tallied, **options).labels("/x"))
    return reference, direct, tally, tallied


# every bound, and just below and above it; zero, huge, and values drawn at random
VALUES = [0.0, 1e9, *(b + d for b in SECONDS_BUCKETS for d in (-1e-9, 0.0, 1e-9))]
VALUES += [random.Random(7).expovariate(40) for _ in range(500)]


async def test_a_histogram_tally_writes_the_buckets_sum_and_count_observe_would() -> None:
    reference, direct, tally, tallied = pair(Histogram)
    for value in VALUES:
        direct.observe(value)
        tally.observe(value)
    written = samples(tallied)
    assert all(value == 0 for _, _, value in written)  # nothing yet: the turn is not over
    await asyncio.sleep(0)  # the next turn begins with the writing
    expected, got = samples(reference), samples(tallied)
    assert [s[:2] for s in got] == [s[:2] for s in expected]
    for (name, labels, want), (_, _, have) in zip(expected, got, strict=True):
        assert math.isclose(have, want, rel_tol=1e-12), (name, labels)
    count = next(v for n, _, v in got if n == "m_count")
    assert count == len(VALUES)
    # a second turn adds to the first
    for value in VALUES[:10]:
        direct.observe(value)
        tally.observe(value)
    await asyncio.sleep(0)
    assert next(v for n, _, v in samples(tallied) if n == "m_count") == len(VALUES) + 10
    assert [s[:2] for s in samples(tallied)] == [s[:2] for s in samples(reference)]


async def test_a_counter_tally_adds_up_within_a_turn() -> None:
    reference, direct, tally, tallied = pair(Counter)
    for _ in range(1000):
        direct.inc()
        tally.inc()
    tally.inc(2.5)
    direct.inc(2.5)
    await asyncio.sleep(0)
    assert samples(tallied) == samples(reference)
    assert ("m_total", (("route", "/x"),), 1002.5) in samples(tallied)


def test_without_an_event_loop_a_tally_writes_at_once() -> None:
    reference, direct, tally, tallied = pair(Histogram)
    tally.observe(0.003)
    direct.observe(0.003)
    assert samples(tallied) == samples(reference)
