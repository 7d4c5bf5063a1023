"""What many tests share: the repository's root, a settable clock, a sale's body, the app
wired to given services, a free port, admitting shoppers into a room, a sales list narrowed to
some sales. Fixtures live in tests/conftest.py; this module holds
plain helpers, imported as `tests.support`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from flashsale.api.app import create_app
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.status import State
from flashsale.waiting_room.tokens import ADMISSION, Claims, Signer

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
def redis_server(
    folder: Path, *, password: str = "", options: Sequence[str] = ()
) -> Iterator[RedisServer]:
    """A Redis of a test's own on a free port, for what the shared one must not go through:
    a password, an outage, server `options`. It loads `folder`'s dump.rdb, if any; answering
    TCP, it may still be loading it. Skips the test where no redis-server binary is installed
    (REDIS_URL then points at a server made elsewhere)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary here to start a Redis of the test's own")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    if password:
        argv += ["--requirepass", password]
    argv += options
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


def make_admit(room: WaitingRoom, clock: Clock, signer: Signer) -> Admit:
    """`await admit(sale, shoppers)` (the `admit` fixture, on any room): admitted shoppers,
    as the admission claims their polls hand out, in the order given. `shoppers` is a number
    of new shoppers, who join after the opening (the room clock is moved past it first), or a
    list of visitor ids, who join at the room's current time: before the opening, into the
    pre-queue, drawn at the opening (then each polls once, as presence from before the opening
    is too old).

    Admission runs batch after batch until all are in, so the sale's batch_size and max_active
    must allow them. At most `chunk` calls run at once, like the API's concurrent requests;
    the crowd reads the room through a cached view of its own, as an API process does."""

    def crowd() -> WaitingRoom:
        return WaitingRoom(
            room.redis, replace(room.settings, status_cache_ms=60_000), room.signer, clock=clock
        )

    async def gathered(calls: list[Awaitable[Any]], chunk: int) -> list[Any]:
        results: list[Any] = []
        for first in range(0, len(calls), chunk):
            results += await asyncio.gather(*calls[first : first + chunk])
        return results

    async def admit(
        sale: Sale, shoppers: int | list[str], *, prefix: str | None = None, chunk: int = 50
    ) -> list[Claims]:
        opens = sale.opens_at.timestamp()
        if isinstance(shoppers, int):
            prefix = prefix or f"shopper-{secrets.token_hex(3)}"
            visitors = [f"{prefix}-{n:05d}" for n in range(shoppers)]
            if clock() < opens:
                clock.advance(opens - clock() + 1)
        else:
            visitors = shoppers
        joining = crowd()
        joined = await gathered([joining.join(sale.id, v, "198.51.100.1") for v in visitors], chunk)
        bad = [(v, j.outcome) for v, j in zip(visitors, joined, strict=True) if j.outcome != "ok"]
        assert not bad, f"joins refused: {bad[:5]}"
        tickets: list[Claims] = [j.claims for j in joined]
        if clock() < opens:  # they joined the pre-queue: open, and let each show presence
            clock.advance(opens - clock() + 1)
            await gathered([crowd().poll(sale.id, t) for t in tickets], chunk)
        for _ in range(2 * len(visitors) // sale.batch_size + 10_000):
            result = await room.admit_once(sale.id)
            if result.outcome == "opened" or (result.outcome == "ok" and result.admitted):
                continue
            if result.outcome == "wait":
                clock.advance(sale.batch_interval_ms / 1000)
                continue
            assert result.outcome in ("ok", "idle", "full"), f"admission stopped: {result}"
            break
        active = dict(await room.redis.zrange(room.keys(sale.id).active, 0, -1, withscores=True))
        missing = [t.visitor for t in tickets if str(t.index) not in active]
        assert not missing, f"{len(missing)} not admitted (is max_active too small?): {missing[:3]}"
        # the admission each shopper's poll hands out
        told = crowd()
        claims: list[Claims] = []
        for poll in await gathered([told.poll(sale.id, t) for t in tickets], chunk):
            assert poll.status.state is State.ADMITTED and poll.admission_token, poll.status
            claims.append(
                signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
            )
        assert [c.index for c in claims] == [t.index for t in tickets]
        return claims

    return admit


def only(sales: Sales, *sale_ids: str) -> Sales:
    """`sales` whose live and recent lists hold these sales only (other tests' sales stay out
    of an admitter's or a persister's steps)."""

    class Only(Sales):
        async def live(self, horizon_seconds: int = 86_400) -> list[Sale]:
            return [s for s in await super().live(horizon_seconds) if s.id in sale_ids]

        async def recent(self, closed_within_seconds: int) -> list[Sale]:
            return [s for s in await super().recent(closed_within_seconds) if s.id in sale_ids]

    return Only(sales.pool, sales.room, clock=sales.clock)
