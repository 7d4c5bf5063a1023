"""Prometheus metrics of the API, correct under several uvicorn workers.

`flashsale api` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start;
each worker then writes its samples there and `/metrics` sums them.
"""

from __future__ import annotations

import os
import time
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
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def render_metrics(request: Request) -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest(REGISTRY)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Times every request, labelled by route template (not raw path: bounded cardinality)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            labelled(REQUEST_SECONDS, path, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )
