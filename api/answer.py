"""An endpoint's answer as plain data, so the hot endpoints' logic serves two front ends: the
Starlette route (a `JSONResponse`) and the framework-free fast path (api/fastpath.py), which
must send exactly the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import JSONResponse

from flashsale.api.inputs import VISITOR_COOKIE

VISITOR_COOKIE_MAX_AGE = 30 * 86400


def visitor_cookie(visitor: str, secure: bool) -> str:
    """The `Set-Cookie` value that keeps a visitor's place (as Starlette's `set_cookie` would
    spell it); the id is checked against VISITOR_ID before it gets here."""
    cookie = (
        f"{VISITOR_COOKIE}={visitor}; HttpOnly; Max-Age={VISITOR_COOKIE_MAX_AGE}; "
        "Path=/; SameSite=lax"
    )
    return cookie + "; Secure" if secure else cookie


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    cookie: str | None = None  # a whole Set-Cookie value, when one is to be set

    def response(self) -> JSONResponse:
        response = JSONResponse(self.body, status_code=self.status, headers=self.headers)
        if self.cookie is not None:
            response.raw_headers.append((b"set-cookie", self.cookie.encode("latin-1")))
        return response

    def raw(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Headers and body for a bare ASGI `send` (JSON as compact as JSONResponse's)."""
        body = orjson.dumps(self.body)
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers.items()
        ]
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        if self.cookie is not None:
            headers.append((b"set-cookie", self.cookie.encode("latin-1")))
        return headers, body
