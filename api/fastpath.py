"""The three calls a flash-sale crowd makes, answered without the framework around them.

Under a spike nearly every request is a status poll, a join or a hold. Their own work is small
(a poll normally reads nothing from Redis, a join or a hold is one Lua script), so their price
was the framework: three middleware layers, the router trying each route's regex, a Request,
query and cookie parsing, `json.dumps`, `http.cookies`. `FastPath` sits first in the
middleware stack and answers a plain `GET .../status`, `POST .../join` or `POST .../holds`
itself, with exactly what the full path would send (body, headers, cookie, `X-Request-ID`,
metrics): the endpoint's logic is shared (`join_answer`, `hold_answer`, `status_body`), only
the reading of the request and the writing of the response are its own.

Anything not plain (a body to validate, a missing or malformed header, an odd query string, a
ticket or token that fails to verify, the access log on) goes down the full path untouched,
which then answers or refuses it as always; that decision is made before anything is changed,
so no request is ever run twice. Once a join or a hold has started, its errors are rendered
by the app's own exception handlers, as the full path would.

Measured with `make bench` (loadtest/bench.py): see the README's "Performance" section.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashsale.api.errors import EXCEPTION_HANDLERS
from flashsale.api.inputs import VISITOR_COOKIE, bearer_token, presented_visitor
from flashsale.api.metrics import POLLS, REQUEST_SECONDS, labelled
from flashsale.api.purchase import hold_answer, idempotency_key
from flashsale.api.request_id import _SAFE
from flashsale.api.request_id import HEADER as REQUEST_ID
from flashsale.api.shopper import join_answer, status_body
from flashsale.logs import request_id
from flashsale.waiting_room.sale import SALE_ID
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import ADMISSION, TICKET

PREFIX = "/api/sales/"
Headers = list[tuple[bytes, bytes]]
Answered = tuple[int, Headers, bytes]
_NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")
# made-up request ids: a random prefix per process and a counter (32 hex digits, as a uuid4
# would give), unique without drawing 16 random bytes per request
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


class Fallback(Exception):
    """Not a plain request: the full path answers it (with `receive` replaying a body read)."""

    def __init__(self, receive: Receive | None = None) -> None:
        super().__init__()
        self.receive = receive


def request_id_of(headers: Headers) -> str:
    """The id RequestIdMiddleware would give: X-Request-ID when it looks sane, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID:
            if _SAFE.match(value):
                return value.decode()
            break
    return f"{_PREFIX}{next(_COUNTER):016x}"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by name; a repeated header is not plain (the full path decides)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in found:
            raise Fallback
        found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _visitor(headers: dict[bytes, bytes]) -> tuple[str | None, str | None]:
    """The visitor presented (X-Visitor-Id, else the cookie; checked) and the cookie's."""
    cookie_value = headers.get(b"cookie")
    cookie = None
    if cookie_value is not None:
        cookie = cookie_parser(cookie_value.decode("latin-1")).get(VISITOR_COOKIE)
    return presented_visitor(_text(headers.get(b"x-visitor-id")), cookie), cookie


def _no_body(headers: dict[bytes, bytes]) -> None:
    if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
        raise Fallback


async def _json_object(
    headers: dict[bytes, bytes], receive: Receive, limit: int
) -> tuple[dict[str, Any], bytes]:
    """A small JSON object body, and its bytes; an empty body is {}."""
    if b"transfer-encoding" in headers:
        raise Fallback
    declared = headers.get(b"content-length", b"0")
    if not declared.isdigit() or int(declared) > limit:
        raise Fallback
    if declared == b"0":
        return {}, b""
    content_type = headers.get(b"content-type", b"application/json")
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        raise Fallback
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise Fallback(_replay(body, message, receive))
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise Fallback(_replay(body, {"type": "http.request", "more_body": more}, receive))
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Fallback(_replay(body, None, receive)) from None
    if not isinstance(parsed, dict):
        raise Fallback(_replay(body, None, receive))
    return parsed, body


def _replay(body: bytes, last: Message | None, receive: Receive) -> Receive:
    """A `receive` that gives back what the fast path already read, then carries on."""
    queued: list[Message] = [
        {"type": "http.request", "body": body, "more_body": bool(last and last.get("more_body"))}
    ]
    if last is not None and last["type"] != "http.request":
        queued = [{"type": "http.request", "body": body, "more_body": True}, last]

    async def replay() -> Message:
        return queued.pop(0) if queued else await receive()

    return replay


async def _rendered(scope: Scope, exc: Exception) -> Answered:
    """An error as the app's exception handlers answer it."""
    handler = next(
        EXCEPTION_HANDLERS[kind] for kind in type(exc).__mro__ if kind in EXCEPTION_HANDLERS
    )
    response = await handler(Request(scope), exc)
    return response.status_code, list(response.raw_headers), bytes(response.body)


# -- the three calls ------------------------------------------------------------------------
# Each raises Fallback until it starts the work; from then on it answers every outcome.


async def _status(services: Services, scope: Scope, receive: Receive, sale_id: str) -> Answered:
    try:
        query = scope["query_string"]
        heartbeat = None
        if query:
            name, _, value = query.partition(b"=")
            if name != b"hb" or not value.isdigit() or len(value) > 18:
                raise Fallback
            heartbeat = int(value)
        headers = _headers(scope)
        ticket = headers.get(b"x-queue-ticket")
        if ticket is None:
            raise Fallback
        presented, _ = _visitor(headers)
        claims = services.signer.verify(
            ticket.decode("latin-1"), kind=TICKET, sale=sale_id, now=time.time()
        )
        if presented is not None and presented != claims.visitor:
            raise Fallback
        # a poll changes nothing that running it again would repeat (its heartbeat bit is
        # idempotent), so even a room missing from Redis goes to the full path
        poll = await services.room.poll(sale_id, claims, heartbeat)
    except Exception:
        raise Fallback from None
    labelled(POLLS, poll.status.state.value).inc()
    body = orjson.dumps(status_body(sale_id, poll))
    return 200, [_NO_STORE, (b"content-length", str(len(body)).encode()), _JSON], body


async def _join(services: Services, scope: Scope, receive: Receive, sale_id: str) -> Answered:
    try:
        headers = _headers(scope)
        _no_body(headers)
        presented, cookie = _visitor(headers)
    except Exception:
        raise Fallback from None
    client = scope.get("client")
    answer = await join_answer(
        services,
        sale_id,
        presented,
        cookie,
        client[0] if client else "unknown",
        authorization=_text(headers.get(b"authorization")),  # identity-pow
        proof=_text(headers.get(b"x-proof-of-work")),  # identity-pow
    )
    answer_headers, body = answer.raw()
    return answer.status, answer_headers, body


async def _hold(services: Services, scope: Scope, receive: Receive, sale_id: str) -> Answered:
    try:
        headers = _headers(scope)
        token = bearer_token(
            _text(headers.get(b"authorization")), _text(headers.get(b"x-admission-token"))
        )
        if not token:
            raise Fallback
        claims = services.signer.verify(token, kind=ADMISSION, sale=sale_id, now=time.time())
        presented, _ = _visitor(headers)
        if presented is not None and presented != claims.visitor:
            raise Fallback
        key = idempotency_key(_text(headers.get(b"idempotency-key")))
    except Exception:
        raise Fallback from None
    body, raw = await _json_object(headers, receive, services.settings.max_body_bytes)
    quantity = body.get("quantity", 1)
    if body.keys() - {"quantity"} or type(quantity) is not int:
        # seats, unknown fields and odd quantities: the full path validates them
        raise Fallback(_replay(raw, None, receive))
    answer = await hold_answer(services, sale_id, claims, key, body)
    answer_headers, answer_body = answer.raw()
    return answer.status, answer_headers, answer_body


Handler = Callable[[Services, Scope, Receive, str], Awaitable[Answered]]
ROUTES: dict[tuple[str, str], tuple[str, Handler]] = {
    ("GET", "status"): ("/api/sales/{sale_id}/status", _status),
    ("POST", "join"): ("/api/sales/{sale_id}/join", _join),
    ("POST", "holds"): ("/api/sales/{sale_id}/holds", _hold),
}


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        sale_id, _, action = path[len(PREFIX) :].partition("/")
        route = ROUTES.get((scope["method"], action))
        services: Services | None = getattr(scope["app"].state, "services", None)
        if (
            route is None
            or services is None
            or not SALE_ID.match(sale_id)
            or getattr(services.settings, "access_log", False)
        ):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id_of(scope["headers"])
        # like RequestIdMiddleware, the id stays set if an error escapes, for the server-error
        # handler outside (the request's task, and so its context, ends with it)
        token = request_id.set(rid)
        try:
            status, headers, body = await route[1](services, scope, receive, sale_id)
        except Fallback as fallback:
            await self.app(scope, fallback.receive or receive, send)
            request_id.reset(token)
            return
        except Exception as exc:
            status, headers, body = await _rendered(scope, exc)
        if not any(name == REQUEST_ID for name, _ in headers):
            headers.append((REQUEST_ID, rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        labelled(REQUEST_SECONDS, route[0], scope["method"], str(status)).observe(
            time.perf_counter() - start
        )
        request_id.reset(token)
