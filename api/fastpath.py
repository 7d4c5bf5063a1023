"""The status poll without the framework: the one call a flash-sale crowd makes over and over.

A waiting shopper's poll normally costs Redis nothing (see waiting_room/room.py), so its price
is the framework around it: three middleware layers, the router trying each route's regex, a
Request object, query-string parsing and JSON encoding cost several times the poll itself.
`FastPoll` sits first in the middleware stack and answers a well-formed `GET
/api/sales/{id}/status` itself, with exactly what the full path would send (body, headers,
`X-Request-ID`, metrics). Anything else, and any poll it cannot answer plainly (no ticket
header, an odd query string, a bad or expired ticket, a room not in Redis, any error), goes
down the full path untouched, which then answers or refuses it as always: a poll has no side
effect that running it twice would repeat (its heartbeat bit is idempotent).

Measured with `make bench` (loadtest/bench.py): see the README's "Performance" section.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import orjson
from starlette.datastructures import State as AppState
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from api.inputs import VISITOR_COOKIE, VISITOR_ID
from api.metrics import POLLS, REQUEST_SECONDS
from api.request_id import _SAFE
from api.request_id import HEADER as REQUEST_ID
from api.shopper import status_body
from flashsale.logs import request_id
from waiting_room.sale import SALE_ID
from waiting_room.tokens import TICKET

PREFIX = "/api/sales/"
SUFFIX = "/status"
ROUTE = "/api/sales/{sale_id}/status"
_NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")
# made-up request ids: a random prefix per process and a counter (32 hex digits, as a uuid4
# would give), unique without drawing 16 random bytes per request
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The id RequestIdMiddleware would give: X-Request-ID when it looks sane, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID:
            if _SAFE.match(value):
                return value.decode()
            break
    return f"{_PREFIX}{next(_COUNTER):016x}"


class FastPoll:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._observe = REQUEST_SECONDS.labels(ROUTE, "GET", "200").observe
        self._polls: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "GET"
                or not path.startswith(PREFIX) or not path.endswith(SUFFIX)):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            body, state = await self._answer(scope, path[len(PREFIX):-len(SUFFIX)])
        except Exception:  # not a plain poll: the full path answers (or refuses) it
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope["headers"])
        token = request_id.set(rid)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                _NO_STORE, (b"content-length", str(len(body)).encode()), _JSON,
                (REQUEST_ID, rid.encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id.reset(token)
            counter = self._polls.get(state)
            if counter is None:
                counter = self._polls[state] = POLLS.labels(state)
            counter.inc()
            self._observe(time.perf_counter() - start)

    @staticmethod
    async def _answer(scope: Scope, sale_id: str) -> tuple[bytes, str]:
        """The poll's JSON body and state, or an exception for the full path to deal with."""
        if not SALE_ID.match(sale_id):
            raise LookupError(sale_id)
        query = scope["query_string"]
        heartbeat = None
        if query:
            name, _, value = query.partition(b"=")
            if name != b"hb" or not value.isdigit() or len(value) > 18:
                raise ValueError(query)
            heartbeat = int(value)
        ticket = visitor = cookie = None
        for name, value in scope["headers"]:
            if name == b"x-queue-ticket":
                ticket = value
            elif name == b"x-visitor-id":
                visitor = value
            elif name == b"cookie":
                cookie = value
        if ticket is None:
            raise LookupError("no ticket header")
        if visitor is None and cookie is not None:
            presented = cookie_parser(cookie.decode("latin-1")).get(VISITOR_COOKIE)
        else:
            presented = None if visitor is None else visitor.decode("latin-1")
        app_state: AppState = scope["app"].state
        services = app_state.services
        if getattr(services.settings, "access_log", False):
            raise LookupError("the access log is written by the full path")
        claims = services.signer.verify(ticket.decode("latin-1"), kind=TICKET, sale=sale_id,
                                        now=time.time())
        if presented is not None and (presented != claims.visitor
                                      or not VISITOR_ID.match(presented)):
            raise PermissionError("another visitor")
        poll = await services.room.poll(sale_id, claims, heartbeat)
        return orjson.dumps(status_body(sale_id, poll)), poll.status.state.value
