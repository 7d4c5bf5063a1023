"""Every error leaves the API as JSON: `{"error": {"code", "message", "field"?}}`.

Bad input is the caller's to fix, so it gets a 4xx that says what to change; Redis not
answering for a moment (a shard failing over, a restart) is a 503 with Retry-After; anything
else is logged with its request id and answered with a bare 500 that leaks no internals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from flashsale.logs import request_id
from flashsale.waiting_room.purchase import PurchaseRefused, Refusal
from flashsale.waiting_room.sale import ValidationError
from flashsale.waiting_room.sales import SaleConflict, SaleNotFound
from flashsale.waiting_room.tokens import TokenExpired, TokenInvalid

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
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
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(error: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field:
        body["field"] = error.field
    return JSONResponse(
        {"error": body, **error.extra}, status_code=error.status, headers=error.headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = {
        404: "no such endpoint",
        405: "method not allowed on this endpoint",
        413: "the request body is too large",
    }.get(exc.status_code, str(exc.detail))
    return error_response(ApiError(exc.status_code, message, headers=exc.headers))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return error_response(ApiError(422, exc.message, field=exc.field))


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(ApiError(404, f"no sale with id {exc.args[0]!r}", code="unknown_sale"))


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return error_response(ApiError(409, str(exc)))


async def _token_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TokenInvalid)
    return error_response(ApiError(401, exc.reason, code="invalid_token"))


async def _token_expired(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TokenExpired)
    return error_response(ApiError(410, exc.reason, code="token_expired"))


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


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PurchaseRefused)
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
    extra: dict[str, Any] = dict(exc.extra)
    if exc.order is not None:
        extra["order"] = exc.order
    field = extra.pop("field", None)
    return error_response(
        ApiError(
            REFUSAL_STATUS[exc.kind],
            exc.message,
            code=exc.code,
            field=field,
            headers=headers,
            extra=extra,
        )
    )


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The sale's Redis (its shard, on a cluster) did not answer: a failover or a restart is
    under way and takes seconds. The request may have taken effect before the connection
    dropped; retried with the same Idempotency-Key, a hold is never made twice."""
    log.warning("Redis unavailable: %s", exc)
    return error_response(
        ApiError(
            503,
            "the sale is briefly unavailable; try again in a moment",
            headers={"Retry-After": "1"},
        )
    )


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    rid = request_id.get()  # still set: see api/request_id.py
    return JSONResponse(
        {"error": {"code": "internal", "message": "internal error", "request_id": rid}},
        status_code=500,
        headers={"X-Request-ID": rid} if rid else None,
    )


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    ValidationError: _validation,
    SaleNotFound: _not_found,
    SaleConflict: _conflict,
    TokenInvalid: _token_invalid,
    TokenExpired: _token_expired,
    PurchaseRefused: _refused,
    RedisConnectionError: _redis_unavailable,
    RedisTimeoutError: _redis_unavailable,
    ClusterDownError: _redis_unavailable,
    TryAgainError: _redis_unavailable,
    RedisClusterException: _redis_unavailable,  # a slot no primary serves yet
    Exception: _internal,
}
