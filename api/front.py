"""The API's one front door: every request, hot or not, passes the same middleware (`Front`:
request id, errors, metrics, access log) and the same router (Starlette's), and is answered
by an endpoint written the same way (`endpoint`: a plain ASGI app around a function of an
`Incoming` request that returns a `Reply`).

Why this shape (measured with `make bench`, docs/performance.md): under a spike nearly every
request is a status poll, a join or a hold, whose own work is small, so the framework's share
decides their speed. Starlette's `Router` is kept (its matching is a regex per route, tried in
order: the hot routes come first), and so are its routes, lifespan and state; what it adds
per request besides is left out: its two exception middlewares and their send wrappers (the
front door renders every error itself, once), `Request` objects, `http.cookies` parsing and
`json.dumps` (api/inputs.py reads the ASGI scope directly; replies are `orjson`).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from flashsale.api.errors import ApiError, api_error
from flashsale.api.inputs import Incoming
from flashsale.api.metrics import REQUEST_SECONDS, labelled
from flashsale.logs import request_id

log = logging.getLogger("flashsale.api")
access = logging.getLogger("flashsale.access")

REQUEST_ID = b"x-request-id"
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# made-up request ids: a random prefix per process and a counter (32 hex digits, as a uuid4
# would give), unique without drawing random bytes per request
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)
_JSON = (b"content-type", b"application/json")
Headers = list[tuple[bytes, bytes]]


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's `X-Request-ID` when it is a sane token (HAProxy's UUID), else a new id."""
    for name, value in headers:
        if name == REQUEST_ID:
            if _SAFE_ID.fullmatch(value):
                return value.decode()
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


# -- replies ---------------------------------------------------------------------------------


class Reply:
    """What an endpoint answers: a status, a body and its headers (names in lower case)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def send(self, scope: Scope, send: Send) -> None:
        headers = [*self.headers, (b"content-length", b"%d" % len(self.body))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body})


def encode_headers(headers: Mapping[str, str] | None) -> Headers:
    if not headers:
        return []
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def json_reply(
    data: Any,
    status: int = 200,
    headers: Mapping[str, str] | Headers | None = None,
    *,
    cookie: str = "",
) -> Reply:
    """A JSON answer. `headers` by name, or already encoded (a constant list, computed
    once); `cookie` a whole Set-Cookie value, when one is to be set."""
    # isinstance against a concrete type: cheaper than against the Mapping ABC
    encoded = list(headers) if isinstance(headers, list) else encode_headers(headers)
    encoded.append(_JSON)
    if cookie:
        encoded.append((b"set-cookie", cookie.encode("latin-1")))
    return Reply(status, orjson.dumps(data), encoded)


def error_reply(error: ApiError) -> Reply:
    return json_reply(error.body(), error.status, error.headers)


# -- endpoints -------------------------------------------------------------------------------

Handler = Callable[[Incoming], Awaitable[Reply]]


class Endpoint:
    """A route's plain ASGI app: the request's inputs in, its reply out. Being no function,
    Starlette's `Route` calls it as it is (no `Request`, no exception wrapper)."""

    __slots__ = ("allowed", "handler")

    def __init__(self, handler: Handler, allowed: frozenset[str] | None) -> None:
        self.handler = handler
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = await self.handler(Incoming(scope, receive, self.allowed))
        await reply.send(scope, send)


def endpoint(query: Sequence[str] | None = ()) -> Callable[[Handler], Endpoint]:
    """Make `handler` an endpoint taking the query parameters `query` (any other is refused;
    None: the query is ignored, as the HTML pages do)."""

    def wrap(handler: Handler) -> Endpoint:
        return Endpoint(handler, None if query is None else frozenset(query))

    return wrap


# -- the front door --------------------------------------------------------------------------


class Front:
    """Every HTTP request's way in: its id (HAProxy's `X-Request-ID`, or a new one) set for
    the logs and returned; any error rendered as the API's JSON error (a bug logged and
    answered 500); the request timed in the metrics by route template; the access log line
    (FLASHSALE_ACCESS_LOG) written. The same code runs whether the access log is on or off."""

    def __init__(self, app: ASGIApp, *, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id_of(scope["headers"])
        token = request_id.set(rid)
        tag = (REQUEST_ID, rid.encode())
        status = 0

        def tagged(message: Message) -> Awaitable[None]:
            # not a coroutine: the caller awaits the server's own `send`, one frame less
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), tag]
            return send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception as exc:
            error = api_error(exc)
            if status:  # too late to answer: the server ends the connection
                log.exception("error after the answer started", exc_info=exc)
                raise
            if error is None:
                log.exception("unhandled error", exc_info=exc)
                reply = json_reply(
                    {"error": {"code": "internal", "message": "internal error", "request_id": rid}},
                    500,
                )
            else:
                if error.status >= 500:
                    log.warning("answered %s: %s: %s", error.status, type(exc).__name__, exc)
                reply = error_reply(error)
            await reply.send(scope, tagged)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labelled(REQUEST_SECONDS, route, scope["method"], str(status or 500)).observe(
                time.perf_counter() - start
            )
            if self.access_log:
                log_access(scope, rid, status or 500, start, route)
            request_id.reset(token)


def log_access(scope: Scope, rid: str, status: int, start: float, route: str) -> None:
    """The access-log line of one request (`start`: its time.perf_counter() on arrival)."""
    extra: dict[str, Any] = {
        "request_id": rid,
        "method": scope["method"],
        "route": route,
        "status": status,
        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
        "client": _client(scope),
    }
    sale = scope.get("path_params", {}).get("sale_id")
    if sale:
        extra["sale"] = sale
    access.info("%s %s %s", scope["method"], route, status, extra=extra)


def _client(scope: Scope) -> str | None:
    """The client's address as the join rate limits see it (trusted proxies walked)."""
    try:
        return Incoming(scope, _no_body, None).address()
    except (ApiError, AttributeError, KeyError):  # a repeated X-Forwarded-For; no services
        client = scope.get("client")
        return client[0] if client else None


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class IndexedRouter(Router):
    """Starlette's Router, trying only the routes that can match: a route whose template ends
    in a literal segment (`.../status`) is tried only for paths ending in it. The order of the
    candidates, and so the first full match and the 405s, are Starlette's; the saving is the
    regex of every other route (measured: docs/performance.md).

    A full match is also remembered by method and path (up to MATCHES_KEPT of them, then
    forgotten all at once): a crowd polls, joins and holds on the few paths of a few sales,
    and the next request on one of them takes the route and path parameters Starlette's
    matching gave the last one, without matching again."""

    MATCHES_KEPT = 4096

    _index: dict[str, list[BaseRoute]]
    _others: list[BaseRoute]
    _indexed = -1
    _matched: dict[tuple[str, str], tuple[Route, Scope]]

    def _candidates(self, path: str) -> list[BaseRoute]:
        if self._indexed != len(self.routes):  # routes added since: index again
            literal: dict[str, list[BaseRoute]] = {}
            for route in self.routes:
                last = route.path.rsplit("/", 1)[-1] if isinstance(route, Route) else "{"
                if "{" not in last:
                    literal.setdefault(last, [])
            for route in self.routes:
                last = route.path.rsplit("/", 1)[-1] if isinstance(route, Route) else "{"
                for segment, routes in literal.items():
                    if "{" in last or last == segment:
                        routes.append(route)
            self._index = literal
            self._others = [
                r
                for r in self.routes
                if not isinstance(r, Route) or "{" in r.path.rsplit("/", 1)[-1]
            ]
            self._matched = {}
            self._indexed = len(self.routes)
        return self._index.get(path.rsplit("/", 1)[-1], self._others)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        scope.setdefault("router", self)
        # what a match depends on besides the routes: none of these set (the app's own scope)
        plain = not scope.get("root_path") and "path_params" not in scope
        key = (scope["method"], scope["path"])
        if plain and self._indexed == len(self.routes):
            known = self._matched.get(key)
            if known is not None:
                hit, child_scope = known
                scope["route"] = hit
                scope.update(child_scope)
                scope["path_params"] = dict(child_scope["path_params"])  # the endpoint's own
                # a full match allows the method: Route.handle would call its app straight away
                await hit.app(scope, receive, send)
                return
        partial = None
        for route in self._candidates(scope["path"]):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                if plain and isinstance(route, Route):
                    if len(self._matched) >= self.MATCHES_KEPT:
                        self._matched.clear()
                    self._matched[key] = (
                        route,
                        {**child_scope, "path_params": {**child_scope["path_params"]}},
                    )
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return
        await self.default(scope, receive, send)


class App(Starlette):
    """Starlette's application with its middleware stack replaced by the front door:
    middleware added with `add_middleware` runs inside it, around the router, for every
    route."""

    def __init__(
        self, routes: Sequence[BaseRoute], *, lifespan: Lifespan[Any], access_log: bool
    ) -> None:
        super().__init__(lifespan=lifespan)
        # a trailing slash is a 404, not a redirect
        self.router = IndexedRouter(routes, redirect_slashes=False, lifespan=lifespan)
        self.access_log = access_log

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router.middleware_stack  # the router's dispatch, one call nearer
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return Front(app, access_log=self.access_log)
