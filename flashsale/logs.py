"""Structured logging: one JSON object per line, carrying the request id of the HTTP request
being served (taken from HAProxy's `X-Request-ID`, or made up) so one request can be followed
from the load balancer through every process it touches."""

from __future__ import annotations

import errno
import json
import logging
import ssl
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def reason(error: BaseException) -> str:
    """A short why of a failure to reach a server ("connection refused", "timed out", ...),
    for the one line a person reads: the plainest cause in the chain of causes."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {cause.verify_message}"
    for cause in chain:
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror).lower()
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
