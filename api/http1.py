"""HTTP/1.1 as `flashsale api` serves it (uvicorn's httptools protocol), with the API's JSON
error for what the server refuses before the app sees it: a request it cannot parse (400: a
malformed request line, header or chunk, a bad or doubled Content-Length), a request target
longer than MAX_TARGET_BYTES (414) and headers over MAX_HEADER_BYTES in all (431; uvicorn's
httptools protocol has no limit of its own). The connection is closed after such an answer,
as uvicorn does.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flashsale.api.errors import CODES

MAX_TARGET_BYTES = 8192  # as HAProxy's and nginx's default buffers allow
MAX_HEADER_BYTES = 16384
MESSAGES = {
    400: "the request is not valid HTTP/1.1",
    414: f"the request target is longer than {MAX_TARGET_BYTES} bytes",
    431: f"the request headers are larger than {MAX_HEADER_BYTES} bytes",
}
REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class TooLarge(Exception):
    """Raised from a parser callback: httptools then fails the request."""


def refusal(status: int) -> bytes:
    """The whole HTTP answer refusing a request the app never saw."""
    body = orjson.dumps({"error": {"code": CODES[status], "message": MESSAGES[status]}})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


# uvicorn's own callbacks, called directly: the parser calls these once per request and per
# header, and super() would cost as much again as the counting
_message_begin = HttpToolsProtocol.on_message_begin
_url = HttpToolsProtocol.on_url
_header = HttpToolsProtocol.on_header


class JsonErrors(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing with JSON and bounding the request head."""

    _refuse = 400
    _target_bytes = 0
    _header_bytes = 0

    def on_message_begin(self) -> None:
        _message_begin(self)
        self._refuse = 400
        self._target_bytes = self._header_bytes = 0

    def on_url(self, url: bytes) -> None:  # called once per fragment of the target
        self._target_bytes += len(url)
        if self._target_bytes > MAX_TARGET_BYTES:
            self._refuse = 414
            raise TooLarge
        _url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse = 431
            raise TooLarge
        _header(self, name, value)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(refusal(self._refuse))
        self.transport.close()
