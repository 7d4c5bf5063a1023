"""Reading a request: the one layer through which every route parses what it is given (path
parameters, query, headers, cookies, body, the caller's address) into typed values, refusing
bad input with the API's JSON error. The parsers are pure functions (tests/unit checks them
with hypothesis); `Incoming` applies them to one request, each part parsed on first use.

The rules, the same on every route (docs/http-api.md):
- path: a sale id is a lowercase DNS label, else 404 `unknown_sale`. An order id is a UUID in
  any usual spelling (upper or lower case, with or without hyphens, in braces, as
  `urn:uuid:`) and is canonicalised (lowercase, hyphenated) before use; anything else is
  404 `unknown_order`.
- query: a JSON endpoint refuses a parameter it does not define, and one given twice (400,
  `field` names it); the HTML pages and their static files ignore what they do not read.
- headers: one the API reads given twice is refused (400, `field` names it); each value is
  checked by type (visitor ids, Idempotency-Key, Content-Length, bearer tokens).
- body: a JSON object (a route names the fields it takes: any other is 422, as is any other
  JSON value, `null` included); a route that takes no fields accepts no body or `{}`; over
  the route's limit 413; another Content-Type 415; malformed JSON 400.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson
from starlette.requests import cookie_parser
from starlette.types import Receive, Scope

from flashsale.api.errors import ApiError, unknown_sale
from flashsale.waiting_room.sale import SALE_ID

if TYPE_CHECKING:
    from flashsale.waiting_room.services import Services

VISITOR_COOKIE = "fs_vid"
VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: int() would take '٣' or ' 3'
LENGTH = re.compile(rb"[0-9]{1,18}")
_HEX = "[0-9a-f]"
ORDER_ID = re.compile(
    rf"(?:urn:uuid:)?(?P<brace>\{{)?"
    rf"(?P<uuid>{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})"
    rf"(?(brace)\}})",
    re.IGNORECASE | re.ASCII,
)
TRUE, FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})
# past the limit, a body is still read (and dropped) up to this much more, so a client that
# sent it whole hears the 413 instead of a connection reset
DRAIN_BYTES = 1 << 20
NO_FIELDS: frozenset[str] = frozenset()


# -- the parsers -----------------------------------------------------------------------------


def sale_id(raw: str) -> str:
    if not SALE_ID.fullmatch(raw):
        raise unknown_sale(raw)
    return raw


def order_id(raw: str) -> str:
    """The order id in its canonical spelling (the one the API hands out)."""
    match = ORDER_ID.fullmatch(raw)
    if match is None:
        raise ApiError(404, "no such order", code="unknown_order")
    h = match["uuid"].replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def visitor_id(raw: str) -> str:
    if not VISITOR_ID.fullmatch(raw):
        raise ApiError(
            400, "the visitor id must be 8-64 letters, digits, '-' or '_'", field="visitor_id"
        )
    return raw


def new_visitor_id() -> str:
    return secrets.token_urlsafe(16)


def integer(raw: str, name: str, lowest: int = 0) -> int:
    if not INTEGER.fullmatch(raw) or int(raw) < lowest:
        raise ApiError(
            400, f"query parameter {name!r} must be a whole number from {lowest}", field=name
        )
    return int(raw)


def boolean(raw: str, name: str) -> bool:
    value = raw.lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false", field=name)


def idempotency_key(raw: str) -> str:
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise ApiError(
            400, "Idempotency-Key must be 1-200 visible ASCII characters", field="Idempotency-Key"
        )
    return raw


def bearer(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive); '' if none."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def content_length(raw: bytes) -> int:
    if not LENGTH.fullmatch(raw):
        raise ApiError(400, "Content-Length must be a number", field="Content-Length")
    return int(raw)


def query(raw: bytes, allowed: frozenset[str] | None) -> dict[str, str]:
    """The query string's parameters; with `allowed`, any other and any repeated one is
    refused (None: the caller ignores what it does not read, and the last value wins)."""
    found: dict[str, str] = {}
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        if allowed is not None:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise ApiError(
                    400, f"unknown query parameter; this endpoint takes: {known}", field=name
                )
            if name in found:
                raise ApiError(400, f"query parameter {name!r} is given twice", field=name)
        found[name] = value
    return found


def json_object(body: bytes, fields: frozenset[str] | None) -> dict[str, Any]:
    """A JSON object of the given fields (None: any; the core checks them). JSON `null`,
    arrays and scalars are refused, not read as an empty request."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # bad UTF-8, bad JSON, lone surrogates, deep nesting
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "the body must be a JSON object", field="body")
    if fields is not None:
        unknown = sorted(value.keys() - fields)
        if unknown:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ApiError(422, f"unknown field; allowed: {allowed}", field=unknown[0])
    return value


# -- the caller's address ----------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Proxies:
    """The proxies trusted to report a client's address in X-Forwarded-For
    (FLASHSALE_FORWARDED_ALLOW_IPS: addresses and networks, or `*` for any)."""

    everyone: bool
    networks: tuple[Network, ...]

    def trusts(self, address: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


@functools.cache
def proxies(setting: str) -> Proxies:
    """FLASHSALE_FORWARDED_ALLOW_IPS parsed (once per value); ValueError names a bad entry."""
    entries = [e.strip() for e in setting.split(",") if e.strip()]
    if "*" in entries:
        return Proxies(True, ())
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"FLASHSALE_FORWARDED_ALLOW_IPS: {entry!r} is not an address or a network"
            ) from None
    return Proxies(False, tuple(networks))


def _hop(raw: str) -> str | None:
    """One X-Forwarded-For entry as a normalised address (a port or brackets dropped)."""
    raw = raw.strip()
    if raw.startswith("["):
        raw = raw[1 : raw.find("]")] if "]" in raw else ""
    elif raw.count(":") == 1:
        raw = raw.partition(":")[0]
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: Proxies) -> str:
    """The address the nearest untrusted hop connected from: walking X-Forwarded-For from
    the right (each proxy appends the address it saw), past the trusted proxies. Entries left
    of it were written by the client and are never used; a hop that is not an address stops
    the walk at the proxy that wrote it. When every hop is trusted, the left-most counts."""
    if peer is None:
        return "unknown"
    if forwarded_for is None or not trusted.trusts(peer):
        return peer
    nearest = peer
    hops = forwarded_for.split(",")
    for raw in reversed(hops):
        hop = _hop(raw)
        if hop is None:
            return nearest
        if not trusted.trusts(hop):
            return hop
        nearest = hop
    return nearest


# -- one request -------------------------------------------------------------------------------


class Incoming:
    """One request's inputs, each parsed on first use by the parsers above."""

    __slots__ = ("_cookies", "_headers", "_query", "_repeated", "receive", "scope", "services")

    def __init__(self, scope: Scope, receive: Receive, allowed: frozenset[str] | None) -> None:
        self.scope = scope
        self.receive = receive
        self.services: Services = scope["app"].state.services
        self._headers: dict[bytes, bytes] | None = None
        self._repeated: frozenset[bytes] | set[bytes] = frozenset()
        self._cookies: dict[str, str] | None = None
        raw = scope["query_string"]
        self._query = query(raw, allowed) if raw else {}

    # headers, cookies, query, path

    def _all_headers(self) -> dict[bytes, bytes]:
        if self._headers is None:
            found: dict[bytes, bytes] = {}
            for name, value in self.scope["headers"]:
                if name in found:
                    self._repeated = {*self._repeated, name}
                    if name == b"cookie":  # several Cookie headers are one list (RFC 6265)
                        value = found[name] + b"; " + value
                found[name] = value
            self._headers = found
        return self._headers

    def header(self, name: bytes) -> str | None:
        """A single-valued header (`name` in lower case): given twice, it is refused."""
        value = self._all_headers().get(name)
        if value is None:
            return None
        if name in self._repeated and name != b"cookie":
            title = name.decode().title()
            raise ApiError(400, f"the {title} header is given more than once", field=title)
        return value.decode("latin-1")

    def cookie(self, name: str) -> str | None:
        if self._cookies is None:
            raw = self.header(b"cookie")
            self._cookies = cookie_parser(raw) if raw else {}
        return self._cookies.get(name)

    def query(self, name: str) -> str | None:
        return self._query.get(name)

    def query_int(self, name: str) -> int | None:
        raw = self._query.get(name)
        return None if raw is None or raw == "" else integer(raw, name)

    def query_bool(self, name: str, default: bool) -> bool:
        raw = self._query.get(name)
        return default if raw is None else boolean(raw, name)

    def path(self, name: str) -> str:
        value: str = self.scope["path_params"][name]
        return value

    @property
    def sale_id(self) -> str:
        return sale_id(self.path("sale_id"))

    @property
    def order_id(self) -> str:
        return order_id(self.path("order_id"))

    # who is asking

    def visitor(self) -> str | None:
        """The visitor id presented (X-Visitor-Id, else the fs_vid cookie), checked."""
        value = self.header(b"x-visitor-id") or self.cookie(VISITOR_COOKIE)
        return None if value is None else visitor_id(value)

    def known_visitor(self) -> str:
        visitor = self.visitor()
        if visitor is None:
            raise ApiError(
                401,
                "identify yourself with the X-Visitor-Id header or the fs_vid cookie from join",
                code="missing_visitor",
            )
        return visitor

    def ticket(self) -> str:
        ticket = self.header(b"x-queue-ticket") or self.query("ticket")
        if not ticket:
            raise ApiError(
                401,
                "a queue ticket is required: send the ticket from join in the "
                "X-Queue-Ticket header or the ticket query parameter",
                code="missing_ticket",
            )
        return ticket

    def admission_token(self) -> str:
        token = bearer(self.header(b"authorization")) or self.header(b"x-admission-token")
        if not token:
            raise ApiError(
                401,
                "an admission token is required: send the token from your status "
                "as 'Authorization: Bearer <token>'",
                code="missing_admission",
            )
        return token

    def idempotency_key(self) -> str | None:
        raw = self.header(b"idempotency-key")
        return None if raw is None else idempotency_key(raw)

    def address(self) -> str:
        """The client's address, as the nearest untrusted hop saw it (see client_address)."""
        client = self.scope.get("client")
        return client_address(
            client[0] if client else None,
            self.header(b"x-forwarded-for"),
            proxies(self.services.settings.forwarded_allow_ips),
        )

    def require_admin(self) -> None:
        expected = self.services.settings.admin_token
        if not expected:
            raise ApiError(
                403,
                "the admin API is disabled: set FLASHSALE_ADMIN_TOKEN to enable it",
                code="admin_disabled",
            )
        given = bearer(self.header(b"authorization"))
        if not given:
            raise ApiError(
                401,
                "send the admin token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "the admin token is wrong", headers={"WWW-Authenticate": "Bearer"})

    # the body

    async def json_object(
        self, limit: int, fields: frozenset[str] | None = NO_FIELDS, *, required: bool = False
    ) -> dict[str, Any]:
        """The body as a JSON object of `fields` (None: any, checked by the core); no body is
        {} unless `required`."""
        body = await self.body(limit)
        if not body:
            if required:
                raise ApiError(400, "a JSON body is required")
            return {}
        content_type = self.header(b"content-type")
        if content_type and content_type.partition(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
        return json_object(body, fields)

    async def body(self, limit: int) -> bytes:
        """The whole body, refused (413) past `limit` bytes, declared or sent."""
        headers = self._all_headers()
        declared = headers.get(b"content-length")
        if (
            declared is None
            and b"transfer-encoding" not in headers
            and self.scope.get("http_version", "1.1") in ("1.1", "1.0")
        ):
            return b""  # HTTP/1: neither header, no body (RFC 9112, 6.3)
        if declared is not None:
            if b"content-length" in self._repeated:
                raise ApiError(
                    400, "Content-Length is given more than once", field="Content-Length"
                )
            if content_length(declared) > limit:
                await self._drain(0, limit)
        if declared == b"0":
            return b""
        body = b""
        more = True
        while more:
            message = await self.receive()
            if message["type"] != "http.request":  # the client went away
                raise ApiError(400, "the request body ended early")
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._drain(len(body) if more else -1, limit)
        return body

    async def _drain(self, read: int, limit: int) -> None:
        """Refuse a body over the limit, after reading what is left of it (up to DRAIN_BYTES
        past the limit), so the client, still sending, hears the answer."""
        while 0 <= read <= limit + DRAIN_BYTES:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raise ApiError(413, f"the request body is larger than {limit} bytes")
