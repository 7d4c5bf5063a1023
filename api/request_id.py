"""Carry a request id (HAProxy's `X-Request-ID`, or a new one) into logs and the response,
and write the optional access log (FLASHSALE_ACCESS_LOG): one line per request."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashsale.logs import request_id

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

access = logging.getLogger("flashsale.access")


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's `X-Request-ID` when it is a sane token (HAProxy's UUID), else a new id."""
    for name, value in headers:
        if name == HEADER:
            if _SAFE.match(value):
                return value.decode()
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope["headers"])
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            # The id stays set: Starlette's server-error handler runs outside this middleware,
            # in the same task, and logs the error (and answers 500) with it. Under uvicorn
            # each request has a task, and so a context, of its own.
            if self.access_log:
                log_access(scope, rid, 500, start)
            raise
        if self.access_log:
            log_access(scope, rid, status, start)
        request_id.reset(token)


def log_access(
    scope: Scope, rid: str, status: int, start: float, *, route: str | None = None
) -> None:
    """The access-log line of one request (`start`: its time.perf_counter() on arrival;
    `route`: the route template, when no router matched it into the scope)."""
    route = route or getattr(scope.get("route"), "path", None) or "unmatched"
    client = scope.get("client")
    extra = {
        "request_id": rid,
        "method": scope["method"],
        "route": route,
        "status": status,
        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
        "client": client[0] if client else None,
    }
    sale = scope.get("path_params", {}).get("sale_id")
    if sale:
        extra["sale"] = sale
    access.info("%s %s %s", scope["method"], route, status, extra=extra)
