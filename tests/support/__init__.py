"""What many tests share: the repository's root, a settable clock, a sale's body, the app
wired to given services, a free port. Fixtures live in tests/conftest.py; this module holds
plain helpers, imported as `tests.support`."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from flashsale.api.app import create_app
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"
# `await admit(sale, shoppers)` (the fixture in tests/conftest.py)
Admit = Callable[..., Awaitable[list[Claims]]]


class Clock:
    """A settable clock for the room's own notion of time (Redis and PostgreSQL stay real)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        return (time.time() if self.frozen is None else self.frozen) + self.offset

    def freeze(self) -> None:
        """Stop the clock at the current instant: from now on only `advance` moves it, so
        tests can place the room's time to the millisecond."""
        self.frozen = time.time()

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), UTC)


def sale_body(**overrides: Any) -> dict[str, Any]:
    """A valid sale opening in an hour, with a fresh id; override any field."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "id": f"t-{secrets.token_hex(6)}",
        "name": "Test sale",
        "stock": 100,
        "opens_at": (now + timedelta(hours=1)).isoformat(),
        "closes_at": (now + timedelta(hours=3)).isoformat(),
        "admission": {
            "batch_size": 10,
            "batch_interval_ms": 50,
            "max_active": 50,
            "admission_ttl_seconds": 600,
            "abandon_after_seconds": 60,
        },
    }
    body.update(overrides)
    return body


def app_for(services: Services) -> Starlette:
    """The real app wired to `services` (its lifespan opens nothing: the services exist)."""
    app = create_app(services.settings)
    app.state.services = services
    return app


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
