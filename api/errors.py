"""Every error leaves the API as JSON: `{"error": {"code", "message", "field"?}}`.

Bad input is the caller's to fix, so it gets a 4xx that says what to change; a data store
not answering for a moment (a Redis shard failing over, PostgreSQL restarting) is a 503 with
Retry-After; anything else is logged with its request id and answered with a bare 500 that
leaks no internals. The core raises domain errors, never statuses: `api_error` is the one place
that chooses the status of each, and api/front.py the one place that renders them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from flashsale.waiting_room.db import UNAVAILABLE as DATABASE_UNAVAILABLE
from flashsale.waiting_room.purchase import PurchaseRefused, Refusal
from flashsale.waiting_room.sale import ValidationError
from flashsale.waiting_room.sales import SaleConflict, SaleNotFound
from flashsale.waiting_room.tokens import TokenExpired, TokenInvalid

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    431: "headers_too_large",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error, **self.extra}


# the HTTP status of each kind of refusal the core raises
REFUSAL_STATUS = {
    Refusal.INVALID: 422,
    Refusal.FORBIDDEN: 403,
    Refusal.NOT_FOUND: 404,
    Refusal.CONFLICT: 409,
    Refusal.GONE: 410,
    Refusal.DECLINED: 402,
    Refusal.UNAVAILABLE: 503,
}
# what the router itself refuses (Starlette raises HTTPException for these)
_ROUTER_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    413: "the request body is too large",
}


# a data store that does not answer, or a connection to it that broke: the request may well
# succeed a moment later, so 503 and Retry-After, not a 500
# a data store not answering: Redis (or, on a cluster, a shard mid-failover or a slot no
# primary serves yet) and PostgreSQL (the core's list of what "unreachable" looks like)
OUTAGES = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    *DATABASE_UNAVAILABLE,
)


def unknown_sale(sale_id: str) -> ApiError:
    return ApiError(404, f"no sale with id {sale_id!r}", code="unknown_sale")


def api_error(exc: Exception) -> ApiError | None:
    """The API error `exc` stands for; None when it is a bug (answered 500, and logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PurchaseRefused):
        extra: dict[str, Any] = dict(exc.extra)
        if exc.order is not None:
            extra["order"] = exc.order
        field = extra.pop("field", None)
        retry = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
        return ApiError(
            REFUSAL_STATUS[exc.kind],
            exc.message,
            code=exc.code,
            field=field,
            headers=retry,
            extra=extra,
        )
    if isinstance(exc, TokenExpired):  # before TokenInvalid's base class could match
        return ApiError(410, exc.reason, code="token_expired")
    if isinstance(exc, TokenInvalid):
        return ApiError(401, exc.reason, code="invalid_token")
    if isinstance(exc, ValidationError):
        return ApiError(422, exc.message, field=exc.field)
    if isinstance(exc, SaleNotFound):
        return unknown_sale(str(exc.args[0]))
    if isinstance(exc, SaleConflict):
        return ApiError(409, str(exc))
    if isinstance(exc, HTTPException):
        message = _ROUTER_MESSAGES.get(exc.status_code, str(exc.detail))
        return ApiError(exc.status_code, message, headers=exc.headers)
    if isinstance(exc, OUTAGES):
        return ApiError(
            503,
            "a data store is not answering; try again shortly",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    return None
