"""Prometheus metrics of the API, correct under several uvicorn workers.

`flashsale api` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start;
each worker then writes its samples there and `/metrics` sums them.

The hot path's observations (a request's duration, a poll's or a join's count) are added up
in plain Python numbers and written to prometheus_client once per event-loop turn (`Tally`):
in multi-process mode every `inc()` or `observe()` takes a lock, asks the pid (a fork check)
and writes an mmap'd file, 1 µs a counter and 2 µs a histogram, measured; a busy worker
answers many requests in one turn, so most of that is saved (docs/performance.md). What a
turn recorded is written at its end, before anything else runs, and `metrics_text` writes
what is pending before it reads: /metrics never misses an answered request.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REQUEST_SECONDS = Histogram(
    "flashsale_http_request_duration_seconds",
    "HTTP request latency by route, method and status",
    ["route", "method", "status"],
    buckets=SECONDS_BUCKETS,
)
JOINS = Counter("flashsale_joins", "Join requests by result", ["result"])
POLLS = Counter("flashsale_polls", "Status polls by the state answered", ["state"])
HOLDS = Counter("flashsale_holds", "Holds by result (created, replayed)", ["result"])
PAYMENTS = Counter("flashsale_payments", "Payment attempts by outcome", ["outcome"])


class Tally:
    """One labelled child's observations not yet written: `inc` for a counter, `observe` for
    a histogram (its buckets found as prometheus_client finds them: the first upper bound
    not below the value)."""

    __slots__ = ("amount", "bounds", "child", "counts", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = False
        self.amount = 0.0  # a counter's increments, or a histogram's sum
        self.bounds: list[float] = list(child._upper_bounds) if isinstance(child, Histogram) else []
        self.counts = [0] * len(self.bounds)

    def inc(self, amount: float = 1.0) -> None:
        self.amount += amount
        if not self.pending:
            _pend(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.amount += value
        if not self.pending:
            _pend(self)

    def write(self) -> None:
        self.pending = False
        amount, self.amount = self.amount, 0.0
        if not self.bounds:
            self.child.inc(amount)
            return
        # Histogram.observe's own writes, one per bucket touched instead of one per value
        self.child._sum.inc(amount)
        for n, count in enumerate(self.counts):
            if count:
                self.counts[n] = 0
                self.child._buckets[n].inc(count)


_tallies: dict[tuple[Any, ...], Tally] = {}
_pending: list[Tally] = []
_flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on


def labelled(metric: Any, *values: str) -> Tally:
    """The tally of `metric.labels(*values)` (kept: on the hot path `labels()` costs more than
    the observation)."""
    key = (metric, *values)
    tally = _tallies.get(key)
    if tally is None:
        tally = _tallies[key] = Tally(metric.labels(*values))
    return tally


def _pend(tally: Tally) -> None:
    global _flush_on
    tally.pending = True
    _pending.append(tally)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop: write at once
        flush()
        return
    if _flush_on is not loop:  # (a flush scheduled on a loop since closed never ran)
        _flush_on = loop
        loop.call_soon(flush)


def flush() -> None:
    """Write every pending observation to prometheus_client."""
    global _flush_on
    _flush_on = None
    while _pending:
        _pending.pop().write()


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of every worker's samples (or this process's), and its
    content type."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
