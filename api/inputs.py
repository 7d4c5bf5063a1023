"""Reading what a request carries: a bounded JSON body, the visitor, tickets, the caller."""

from __future__ import annotations

import hmac
import json
import re
import secrets
from typing import Any

from starlette.requests import Request

from flashsale.api.errors import ApiError
from flashsale.waiting_room.sale import SALE_ID

VISITOR_COOKIE = "fs_vid"
VISITOR_HEADER = "x-visitor-id"
TICKET_HEADER = "x-queue-ticket"
VISITOR_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


async def read_json(request: Request, limit: int, *, required: bool = True) -> Any:
    """The request's JSON body, refusing oversized, non-JSON and malformed bodies with 4xx."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length must be a number")
        if int(declared) > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
    if not body:
        if required:
            raise ApiError(400, "a JSON body is required")
        return None
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
    try:
        value = json.loads(body)
    # ValueError covers bad UTF-8, bad JSON and over-long integers; RecursionError, deep nesting
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if _has_lone_surrogate(value):
        raise ApiError(400, "the body is not valid JSON: it holds an unpaired UTF-16 surrogate")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string in `value` holds a lone surrogate (a `\\ud800` escape JSON parses but
    UTF-8, PostgreSQL and our own JSON responses cannot carry)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def sale_id_from_path(request: Request) -> str:
    sale_id = str(request.path_params["sale_id"])
    if not SALE_ID.match(sale_id):
        raise ApiError(404, f"no sale with id {sale_id!r}", code="unknown_sale")
    return sale_id


def visitor_of(request: Request) -> str | None:
    """The visitor id the caller presents (header first, then cookie), if any."""
    return presented_visitor(
        request.headers.get(VISITOR_HEADER), request.cookies.get(VISITOR_COOKIE)
    )


def presented_visitor(header: str | None, cookie: str | None) -> str | None:
    """`visitor_of` from the header's and the cookie's values (api/fastpath.py has no
    Request)."""
    value = header or cookie
    if value is None:
        return None
    if not VISITOR_ID.match(value):
        raise ApiError(
            400, "the visitor id must be 8-64 letters, digits, '-' or '_'", field="visitor_id"
        )
    return value


def new_visitor_id() -> str:
    return secrets.token_urlsafe(16)


def bearer_token(authorization: str | None, alternative: str | None) -> str:
    """The token of `Authorization: Bearer <token>`, else the alternative header's; '' if
    neither."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    return token or alternative or ""


def ticket_of(request: Request) -> str:
    ticket = request.headers.get(TICKET_HEADER) or request.query_params.get("ticket")
    if not ticket:
        raise ApiError(
            401,
            "a queue ticket is required: send the ticket from join in the "
            "X-Queue-Ticket header or the ticket query parameter",
            code="missing_ticket",
        )
    return ticket


def client_address(request: Request) -> str:
    """The caller's address; uvicorn has already applied X-Forwarded-For from trusted proxies."""
    return request.client.host if request.client else "unknown"


def require_admin(request: Request, token: str) -> None:
    if not token:
        raise ApiError(
            403,
            "the admin API is disabled: set FLASHSALE_ADMIN_TOKEN to enable it",
            code="admin_disabled",
        )
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "the admin token is wrong", headers={"WWW-Authenticate": "Bearer"})


def int_query(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"-?[0-9]+", raw) or len(raw) > 18:  # ASCII digits: int() agrees
        raise ApiError(400, f"query parameter {name!r} must be a whole number", field=name)
    return int(raw)


def bool_query(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false", field=name)
