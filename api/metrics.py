"""Prometheus metrics of the API, correct under several uvicorn workers.

`flashsale api` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start;
each worker then writes its samples there and `/metrics` sums them.
"""

from __future__ import annotations

import os
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

REQUEST_SECONDS = Histogram(
    "flashsale_http_request_duration_seconds",
    "HTTP request latency by route, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
JOINS = Counter("flashsale_joins", "Join requests by result", ["result"])
POLLS = Counter("flashsale_polls", "Status polls by the state answered", ["state"])
HOLDS = Counter("flashsale_holds", "Holds by result (created, replayed)", ["result"])
PAYMENTS = Counter("flashsale_payments", "Payment attempts by outcome", ["outcome"])


_children: dict[tuple[Any, ...], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, kept: on the hot path `labels()` costs more than `inc()`."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of every worker's samples (or this process's), and its
    content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
