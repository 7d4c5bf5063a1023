"""What many tests share: the repository's root, a settable clock, a sale's body, the app
wired to given services, a free port. Fixtures live in tests/conftest.py; this module holds
plain helpers, imported as `tests.support`."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
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


@dataclass
class RedisServer:
    """A redis-server process of a test's own."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server(folder: Path, *, password: str = "") -> Iterator[RedisServer]:
    """A Redis of a test's own on a free port, for what the shared one must not go through:
    a password, an outage. Skips the test where no redis-server binary is installed (REDIS_URL
    then points at a server made elsewhere)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary here to start a Redis of the test's own")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    if password:
        argv += ["--requirepass", password]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield RedisServer(proc, port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            proc.terminate()
        proc.wait(timeout=10)
