"""`make demo` (`python -m loadtest.demo`): a whole flash sale on this machine, end to end,
checked as it runs.

The demo starts the real API (two uvicorn workers), one admitter and one persister as
subprocesses, creates a sale through the admin API and sends a crowd of simulated shoppers
through the waiting room over HTTP, as browsers would: join, poll at the pace the server asks,
and once admitted hold stock, pay (a few are declined, a few walk away from their hold, a few
cancel after paying), leave. Meanwhile it samples the room straight from Redis to prove the
admission limit holds. At the end it waits for unpaid holds to expire and for the persister to
drain, then squares what every shopper saw with what Redis and PostgreSQL recorded: nothing
oversold, every confirmed purchase in PostgreSQL exactly once, reconcile clean. It prints a
readable summary and, as the very last line of stdout, one JSON object for scripts and tests.

The demo keeps to a Redis prefix and a PostgreSQL schema of its own (`demo`, `flashsale_demo`,
unless the caller chose others), so it neither sees nor disturbs another install's admitter
or persister on the same servers.

Everything a shopper does once admitted lives in one function, `shop` (passed to `run` as
`after_admission`); what it sees is kept in `Demo.checkout`, and `Demo.extra` extends the JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import math
import os
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookiejar import Cookie, CookieJar
from typing import Any

import asyncpg
import httpcore
import httpx

from flashsale.config import Settings, SettingsError
from flashsale.logs import setup_logging
from flashsale.waiting_room.autopipeline import close_shared
from flashsale.waiting_room.db import migrate
from flashsale.waiting_room.keys import HEARTBEAT_SLICES
from flashsale.waiting_room.payments import SimulatedProvider
from flashsale.waiting_room.redis_client import node_of, open_redis, primaries
from flashsale.waiting_room.room import Counters, NoSuchRoom, WaitingRoom, place_of
from flashsale.waiting_room.tokens import TICKET, Signer

DEMO_PREFIX = "demo"
DEMO_SCHEMA = "flashsale_demo"
TERMINAL = ("admitted", "sold_out", "closed", "expired")
# request priorities at the in-flight gate, for when this machine cannot keep up: a leave
# frees a slot for the next shopper (a late one stalls the line until the admission
# expires), and so does a purchase (a confirmed payment ends the admission; a late hold or
# payment may outlive it); a late poll may cost a shopper their place, a late join only
# delays an arrival
LEAVE, BUY, POLL, JOIN = 0, 0, 1, 2
# what an admitted shopper means to do with their hold
PAY, DECLINE, WALK_AWAY, CANCEL = "pay", "decline", "walk_away", "cancel"


@dataclass(frozen=True)
class Plan:
    """The sale and the crowd. Admission is tuned so 3000 shoppers pass in well under a
    minute: admissions last 10 s and absence shows after 6 s, so no-shows and abandoners are
    dealt with while the demo watches."""

    stock: int = 500
    lead_seconds: float = 6.0  # from creating the sale to its opening: the pre-queue forms
    after_open_seconds: float = 10.0  # late arrivals come over this long after the opening
    sale_minutes: int = 10
    batch_size: int = 100
    batch_interval_ms: int = 500
    max_active: int = 300
    admission_ttl_seconds: int = 10
    abandon_after_seconds: int = 6
    prequeue_share: float = 0.60
    abandon_share: float = 0.05  # stop polling while waiting: the admitter must skip them
    no_show_share: float = 0.03  # admitted but never come back: their admission must expire
    patience: tuple[float, float] = (1.0, 12.0)  # an abandoner's seconds of waiting
    shop_seconds: tuple[float, float] = (0.2, 1.5)
    poll_jitter: float = 0.10  # polls come up to 10% early (never late: see `poll_delay`)
    in_flight: int = 32  # requests on the wire at once (= keep-alive connections)
    hard_timeout_seconds: float = 120.0
    drain_seconds: float = 20.0  # after the last shopper, time for the line's tail to resolve
    join_limit_per_address: int = 10_000_000  # every shopper comes from 127.0.0.1
    # the purchase: far fewer units than shoppers, so the sale sells out, and holds as short
    # as a sale allows, so the ones left unpaid expire (and return to stock) while we watch
    price_cents: int = 2500
    per_shopper_limit: int = 2
    hold_seconds: int = 10
    two_units_share: float = 0.15  # hold 2 units instead of 1
    # what an admitted shopper does with their hold (the rest, ~85%, pay and keep it)
    decline_share: float = 0.07  # their card is declined: the hold is released
    walk_away_share: float = 0.05  # never pay: the hold must expire and return to stock
    cancel_share: float = 0.03  # pay, then cancel the order: refunded, the stock returns
    retry_after_decline: float = 0.5  # a declined shopper tries once more, with another card
    lost_answer_share: float = 0.03  # the hold's answer is lost: sent again, same key
    checkout_seconds: tuple[float, float] = (0.1, 0.8)  # from the hold to paying
    new_card_seconds: tuple[float, float] = (1.0, 2.5)  # after a decline, to try another card
    settle_seconds: float = 25.0  # after the line: holds expire, the persister drains

    @property
    def absent_after_seconds(self) -> float:
        """The shortest silence after which a waiter may count as gone: the room looks at
        the last HEARTBEAT_SLICES slices, the current one included (see waiting_room.keys)."""
        return self.abandon_after_seconds * (HEARTBEAT_SLICES - 1) / HEARTBEAT_SLICES


@dataclass
class Shopper:
    """One simulated shopper: the plan for them, then what happened, from their side."""

    n: int
    arrive_at: float  # epoch seconds
    patience: float | None  # seconds of waiting before giving up; None: stays to the end
    no_show: bool
    intent: str = PAY  # what they do with a hold: pay | decline | walk_away | cancel
    units: int = 1  # how many units they hold
    visitor: str | None = None
    ticket: str | None = None
    index: int | None = None  # join index, from the ticket
    joined_at: float | None = None
    admitted_at: float | None = None  # server's admission time (admitted_until - ttl)
    noticed_at: float | None = None  # when this shopper's poll said "admitted"
    told: float = 0.0  # the longest delay the server asked for between two polls
    # the longest the server can have gone without seeing them around their last poll: from
    # sending one request to the answer to the next, over the last two gaps (the API answers
    # from a view of the line up to FLASHSALE_STATUS_CACHE_MS old, so a skip may only show
    # one poll late)
    silence: float = 0.0
    gap: float = 0.0
    outcome: str = "pending"
    # left | no_show | walked_away | abandoned | expired | closed | sold_out | error | unfinished
    purchase: str | None = None
    # bought | cancelled | declined | walked_away | sold_out | insufficient_stock | expired |
    # failed | refused codes (not_admitted...)
    error: str | None = None


@dataclass(frozen=True)
class Sample:
    t: float
    active: int
    waiting: int
    admitted: int
    skipped: int
    frontier: int
    joined: int
    opened: bool
    sold_out: bool = False
    held: int = 0  # units in holds (Redis)
    sold: int = 0  # units paid for (Redis)


@dataclass(frozen=True)
class Batch:
    t: float
    frontier: int
    admitted: int
    skipped: int


class DemoFailed(RuntimeError):
    """The demo could not run the sale at all (a process died, the API never got ready...)."""


# -- HTTP -------------------------------------------------------------------------------------


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections to the one API origin, kept in a free list.

    httpx's default pool rescans every connection (quadratically, checking each socket) on
    every request and, with anyio >= 4.11, retries a failed `import sniffio` on every lock
    (encode/httpcore#1103): 3.6 ms of client CPU per request, more than the API spends
    answering it. A free list costs O(1); the in-flight gate bounds how many connections exist.
    """

    def __init__(self, host: str, port: int, keepalive_seconds: float = 4.0) -> None:
        self._origin = httpcore.Origin(b"http", host.encode(), port)
        self._keepalive = keepalive_seconds  # below uvicorn's 5 s, so the client hangs up first
        self._free: list[httpcore.AsyncHTTPConnection] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connection = None
        while self._free and connection is None:
            candidate = self._free.pop()
            if candidate.is_idle() and not candidate.has_expired():
                connection = candidate
            else:
                await candidate.aclose()
        if connection is None:
            connection = httpcore.AsyncHTTPConnection(
                self._origin, keepalive_expiry=self._keepalive
            )
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        try:
            response = await connection.handle_async_request(core_request)
            body = await response.aread()
            await response.aclose()
        except BaseException as exc:
            await connection.aclose()
            mapped = _as_httpx(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        if connection.is_idle():
            self._free.append(connection)
        else:
            await connection.aclose()
        return httpx.Response(
            response.status, headers=response.headers, content=body, extensions=response.extensions
        )

    async def aclose(self) -> None:
        for connection in self._free:
            await connection.aclose()
        self._free.clear()


def _as_httpx(exc: BaseException, request: httpx.Request) -> BaseException:
    """httpcore's exceptions under httpx's names (they mirror each other), so callers only
    deal with httpx; a connection that was not available means the request was never sent."""
    if isinstance(exc, httpcore.ConnectionNotAvailable):
        return httpx.ConnectError(str(exc), request=request)
    kind = getattr(httpx, type(exc).__name__, None)
    if (
        type(exc).__module__.startswith("httpcore")
        and isinstance(kind, type)
        and issubclass(kind, httpx.TransportError)
    ):
        return kind(str(exc), request=request)
    return exc


class Gate:
    """At most `limit` requests in flight; waiting requests go by priority, then arrival.
    When this machine cannot keep up, arrivals are delayed rather than polls, because a late
    poll makes a shopper who is still there look gone."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


@dataclass
class Checkout:
    """What the shoppers saw of their purchases, squared with PostgreSQL at the end: each list
    holds order ids, in the order the answers came."""

    held: list[str] = field(default_factory=list)  # one per hold created
    units_held: int = 0
    replays: int = 0  # holds sent again with the same Idempotency-Key
    replays_same: int = 0  # ... that came back as the very same hold
    replays_late: int = 0  # ... refused: the admission had expired in between
    refused: Counter[str] = field(default_factory=Counter)  # hold refusals by error code
    confirmed: list[str] = field(default_factory=list)  # paid: answered "confirmed"
    units_confirmed: int = 0
    declined: list[str] = field(default_factory=list)
    retried: int = 0  # declined shoppers who held again to pay with another card
    cancelled: list[str] = field(default_factory=list)  # confirmed, then cancelled (refund)
    walked_away: list[str] = field(default_factory=list)  # left unpaid: must expire
    failed: list[str] = field(default_factory=list)  # the database refused it (refunded)
    expired: list[str] = field(default_factory=list)  # the hold expired before payment

    def expected(self) -> dict[str, tuple[str, str]]:
        """How each order must end in PostgreSQL: (status, start of the reason)."""
        ends: dict[str, tuple[str, str]] = {}
        for ids, end in (
            (self.confirmed, ("confirmed", "")),
            (self.declined, ("released", "payment declined")),
            (self.walked_away, ("released", "hold expired")),
            (self.expired, ("released", "hold expired")),
            (self.failed, ("failed", "")),
            (self.cancelled, ("cancelled", "")),
        ):
            for order_id in ids:
                ends[order_id] = end
        return ends


@dataclass
class Demo:
    """Shared state of one run: the HTTP client, the sale and every measurement."""

    plan: Plan
    settings: Settings
    http: httpx.AsyncClient
    room: WaitingRoom
    rng: random.Random
    gate: Gate
    sale_id: str = ""
    created_at: float = 0.0
    opens_at: float = 0.0
    latency: dict[str, list[float]] = field(default_factory=dict)
    queued: dict[str, list[float]] = field(default_factory=dict)  # seconds waited at the gate
    joins: list[float] = field(default_factory=list)  # when each join was answered
    rate_limited: int = 0
    retries: int = 0
    samples: list[Sample] = field(default_factory=list)
    batches: dict[str, Batch] = field(default_factory=dict)
    checkout: Checkout = field(default_factory=Checkout)
    extra: dict[str, Any] = field(default_factory=dict)  # more JSON fields

    async def call(
        self,
        kind: str,
        method: str,
        url: str,
        *,
        priority: int,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One request through the in-flight gate, timed by `kind`. A 429 waits out its
        Retry-After (outside the gate) and goes again; transport errors and 5xx are retried
        only when repeating is harmless (a join whose answer was lost may have made a place,
        and a second join would make a ghost one)."""
        attempt = 0
        sent_at = 0.0
        while True:
            asked = time.perf_counter()
            response: httpx.Response | None = None
            async with self.gate.slot(priority):
                started = time.perf_counter()
                self.queued.setdefault(kind, []).append(started - asked)
                sent_at = sent_at or time.time()  # the first attempt may be the one served
                try:
                    response = await self.http.request(
                        method, url, headers=headers, params=params, json=json_body
                    )
                except httpx.TransportError as exc:
                    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                    if attempt >= 3 or not (idempotent or unsent):
                        raise
                else:
                    self.latency.setdefault(kind, []).append(time.perf_counter() - started)
                    response.extensions["sent_at"] = sent_at
            if response is not None and response.status_code == 429:
                self.rate_limited += 1
                await asyncio.sleep(_retry_after(response) + self.rng.uniform(0, 0.5))
                continue
            retryable = response is None or (response.status_code >= 500 and idempotent)
            if not retryable or attempt >= 3:
                assert response is not None
                return response
            attempt += 1
            self.retries += 1
            await asyncio.sleep(0.1 * 2**attempt)

    def ticket_headers(self, shopper: Shopper) -> dict[str, str]:
        assert shopper.ticket and shopper.visitor
        return {"X-Queue-Ticket": shopper.ticket, "X-Visitor-Id": shopper.visitor}

    async def leave(self, shopper: Shopper) -> None:
        response = await self.call(
            "leave",
            "POST",
            f"/api/sales/{self.sale_id}/leave",
            priority=LEAVE,
            headers=self.ticket_headers(shopper),
        )
        _expect(response, 200)

    # -- buying ---------------------------------------------------------------------------

    async def hold(
        self, shopper: Shopper, admission_token: str, units: int, lose_answer: bool = False
    ) -> dict[str, Any] | None:
        """Hold `units` with an Idempotency-Key: a retry after a network error (`call` makes
        it), or a second send when the answer was lost (`lose_answer`), must bring back the
        same hold, never a second one. None when refused (the code goes to
        `shopper.purchase`)."""
        assert shopper.visitor
        headers = {
            "Authorization": f"Bearer {admission_token}",
            "X-Visitor-Id": shopper.visitor,
            "Idempotency-Key": f"demo-{shopper.n}-{secrets.token_hex(8)}",
        }
        url = f"/api/sales/{self.sale_id}/holds"
        response = await self.call(
            "hold", "POST", url, priority=BUY, headers=headers, json_body={"quantity": units}
        )
        if response.status_code in (403, 409, 410):  # not admitted (any more), sold out...
            code = _error_code(response)
            self.checkout.refused[code] += 1
            shopper.purchase = code
            return None
        order = _expect(response, 200, 201)
        if response.status_code == 200:  # a retry after a lost answer, answered by the key
            self.checkout.replays += 1
            self.checkout.replays_same += 1  # the first answer never arrived to compare
        if lose_answer:  # as if the answer had been lost on the way: send it all again
            again = await self.call(
                "hold", "POST", url, priority=BUY, headers=headers, json_body={"quantity": units}
            )
            if again.status_code in (403, 410):  # the admission ran out in between: the
                self.checkout.replays_late += 1  # token is checked before the key
            else:
                replay = _expect(again, 200, 201)
                self.checkout.replays += 1
                if again.status_code == 200 and replay["id"] == order["id"]:
                    self.checkout.replays_same += 1
        self.checkout.held.append(order["id"])
        self.checkout.units_held += int(order["quantity"])
        return order

    async def pay(self, shopper: Shopper, order: dict[str, Any], payment_token: str) -> str:
        """Pay for a hold; returns how it ended: confirmed | declined | failed | expired.
        A payment already under way, or a provider that cannot answer now (the hold is
        kept), is tried again after the Retry-After the API asks for: at worst until the
        expiry sweep settles the hold with the provider (hold time + payment window)."""
        assert shopper.visitor
        url = f"/api/sales/{self.sale_id}/orders/{order['id']}/pay"
        give_up = time.monotonic() + self.plan.hold_seconds + 30
        while time.monotonic() < give_up:
            response = await self.call(
                "pay",
                "POST",
                url,
                priority=BUY,
                headers={"X-Visitor-Id": shopper.visitor},
                json_body={"payment_token": payment_token},
            )
            code = _error_code(response)
            if response.status_code == 200:
                paid = response.json()
                if paid.get("status") != "confirmed":
                    raise RuntimeError(f"payment answered 200 with status {paid.get('status')}")
                self.checkout.confirmed.append(order["id"])
                self.checkout.units_confirmed += int(paid["quantity"])
                return "confirmed"
            if code in ("payment_in_progress", "payment_unavailable"):
                await asyncio.sleep(_retry_after(response))
                continue
            ended = response.json().get("order") or {}
            reason = str(ended.get("reason") or "")
            if response.status_code == 402 or reason.startswith("payment declined"):
                self.checkout.declined.append(order["id"])
                return "declined"
            if code == "order_failed":
                self.checkout.failed.append(order["id"])
                return "failed"
            if response.status_code == 410:  # the hold expired before the payment began
                self.checkout.expired.append(order["id"])
                return "expired"
            _expect(response, 200)  # anything else is an error of this shopper
        raise RuntimeError("the payment stayed in progress for too long")

    async def cancel(self, shopper: Shopper, order: dict[str, Any]) -> None:
        """Cancel a confirmed order: refunded, its units return to stock. A second try after
        a lost answer finds it cancelled already, which is the same outcome."""
        assert shopper.visitor
        response = await self.call(
            "cancel",
            "POST",
            f"/api/sales/{self.sale_id}/orders/{order['id']}/cancel",
            priority=BUY,
            headers={"X-Visitor-Id": shopper.visitor},
        )
        if _error_code(response) != "order_cancelled":
            body = _expect(response, 200)
            if body.get("status") != "cancelled":
                raise RuntimeError(f"cancel answered 200 with status {body.get('status')}")
        self.checkout.cancelled.append(order["id"])

    def poll_delay(self, told: float) -> float:
        """The server's delay, up to 10% early so a crowd told the same thing spreads out.
        Never late: the server already staggers its answers, and its delay is the longest a
        waiter may stay silent without risking being taken for gone."""
        return told * self.rng.uniform(1 - self.plan.poll_jitter, 1.0)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _error_code(response: httpx.Response) -> str:
    """The stable `error.code` of an error answer ("" for a success)."""
    if response.status_code < 400:
        return ""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _expect(response: httpx.Response, *codes: int) -> dict[str, Any]:
    if response.status_code not in codes:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text[:200]}"
        )
    body: dict[str, Any] = response.json()
    return body


# -- what shoppers do -------------------------------------------------------------------------

AfterAdmission = Callable[["Demo", Shopper, dict[str, Any]], Awaitable[None]]


async def shop(demo: Demo, shopper: Shopper, admitted: dict[str, Any]) -> None:
    """An admitted shopper's visit: browse a moment, hold a unit (sometimes two), pay, then
    leave so the slot frees at once. Some are declined (the hold is released; half of them
    try once more), some pay and then cancel (refund: the stock returns), some walk away from
    their hold (it must expire and return to stock) and a few never come back at all; only
    their admission's expiry frees the slot of those two. Sold out: they leave."""
    if shopper.no_show:
        shopper.outcome = "no_show"
        return
    plan, rng = demo.plan, demo.rng
    await asyncio.sleep(rng.uniform(*plan.shop_seconds))
    token = admitted["admission_token"]
    order = await demo.hold(
        shopper, token, shopper.units, lose_answer=rng.random() < plan.lost_answer_share
    )
    if order is not None and shopper.intent == WALK_AWAY:
        demo.checkout.walked_away.append(order["id"])
        shopper.outcome = shopper.purchase = "walked_away"
        return
    if order is not None:
        await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
        card = "tok_decline" if shopper.intent == DECLINE else "tok_approve"
        paid = await demo.pay(shopper, order, card)
        if paid == "declined" and rng.random() < plan.retry_after_decline:
            demo.checkout.retried += 1
            await asyncio.sleep(rng.uniform(*plan.new_card_seconds))
            order = await demo.hold(shopper, token, shopper.units)
            if order is not None:
                await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
                paid = await demo.pay(shopper, order, "tok_approve")
        if paid == "confirmed" and shopper.intent == CANCEL:
            await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
            await demo.cancel(shopper, order)
            paid = "cancelled"
        shopper.purchase = {"confirmed": "bought"}.get(paid, paid)
    await demo.leave(shopper)
    shopper.outcome = "left"


async def run_shopper(demo: Demo, shopper: Shopper, after_admission: AfterAdmission) -> None:
    """Arrive, join, poll until the room decides, then hand over to `after_admission`."""
    try:
        await asyncio.sleep(max(0.0, shopper.arrive_at - time.time()))
        shopper.joined_at = time.time()
        response = await demo.call(
            "join", "POST", f"/api/sales/{demo.sale_id}/join", priority=JOIN, idempotent=False
        )
        if response.status_code == 409:  # closed or sold out before this shopper got in
            shopper.outcome = str(response.json().get("state", "closed"))
            return
        body = _expect(response, 200, 201)
        demo.joins.append(time.time())
        seen = response.extensions["sent_at"]
        shopper.visitor, shopper.ticket = body["visitor_id"], body["ticket"]
        shopper.index = demo.room.signer.verify(
            shopper.ticket, kind=TICKET, sale=demo.sale_id, now=time.time()
        ).index
        while not _decided(body):
            told = float(body.get("poll_after_seconds") or 1.0)
            delay = demo.poll_delay(told)
            if shopper.patience is not None:
                give_up = shopper.joined_at + shopper.patience
                if time.time() + delay >= give_up:
                    await asyncio.sleep(max(0.0, give_up - time.time()))
                    shopper.outcome = "abandoned"
                    return
            await asyncio.sleep(delay)
            params = {} if body.get("heartbeat") is None else {"hb": body["heartbeat"]}
            response = await demo.call(
                "status",
                "GET",
                f"/api/sales/{demo.sale_id}/status",
                priority=POLL,
                headers=demo.ticket_headers(shopper),
                params=params,
            )
            body = _expect(response, 200)
            shopper.told = max(shopper.told, told)
            gap = time.time() - seen
            shopper.silence, shopper.gap = max(shopper.gap, gap), gap
            seen = response.extensions["sent_at"]
        if body["state"] != "admitted":  # expired: the frontier passed them while they were
            # (taken for) away, or their admission ran out before they polled; Redis's admitted
            # bit tells which (see `report`)
            shopper.outcome = body["state"]
            return
        shopper.noticed_at = time.time()
        until = datetime.fromisoformat(body["admitted_until"]).timestamp()
        shopper.admitted_at = until - demo.plan.admission_ttl_seconds
        await after_admission(demo, shopper, body)
    except Exception as exc:  # one shopper's failure is counted and reported, not fatal
        shopper.outcome = "error"
        shopper.error = f"{type(exc).__name__}: {exc}"


def _decided(status: dict[str, Any]) -> bool:
    """Whether the room has decided this waiter's fate. "Sold out" is final unless units
    sit in other shoppers' holds: then the place is kept and the answer says when to poll
    again, in case they come back to stock."""
    if status["state"] == "sold_out":
        return status.get("poll_after_seconds") is None
    return status["state"] in TERMINAL


def _intent(plan: Plan, rng: random.Random) -> str:
    draw = rng.random()
    for intent, share in (
        (DECLINE, plan.decline_share),
        (WALK_AWAY, plan.walk_away_share),
        (CANCEL, plan.cancel_share),
    ):
        if draw < share:
            return intent
        draw -= share
    return PAY


def plan_shoppers(
    plan: Plan, count: int, rng: random.Random, created_at: float, opens_at: float
) -> list[Shopper]:
    """Arrivals: a share before the opening (spread over the lead time), the rest after it;
    roles (abandoner, no-show, what they do with a hold) drawn independently of arrival."""
    early = round(count * plan.prequeue_share)
    crowd: list[Shopper] = []
    for n in range(count):
        if n < early:
            arrive = rng.uniform(created_at + 0.2, opens_at - 0.4)
        else:
            arrive = rng.uniform(opens_at + 0.05, opens_at + plan.after_open_seconds)
        patience = rng.uniform(*plan.patience) if rng.random() < plan.abandon_share else None
        crowd.append(
            Shopper(
                n,
                arrive,
                patience,
                no_show=rng.random() < plan.no_show_share,
                intent=_intent(plan, rng),
                units=2 if rng.random() < plan.two_units_share else 1,
            )
        )
    return crowd


# -- watching the room ------------------------------------------------------------------------


async def watch_room(demo: Demo, stop: asyncio.Event, every: float = 0.1) -> None:
    """Sample the room from Redis every 100 ms: the active count (the limit under test), the
    line's progress, the stock, and each admission batch (Redis keeps only the last 64, so
    collect them as they come)."""
    keys = demo.room.keys(demo.sale_id)
    next_at = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(NoSuchRoom):
            c = await demo.room.counters(demo.sale_id)
            raw = await demo.room.redis.lrange(keys.batches, 0, -1)
            held, sold = await demo.room.redis.hmget(keys.inventory, ["held", "sold"])
            demo.samples.append(
                Sample(
                    time.time(),
                    c.active,
                    c.waiting,
                    c.admitted_total,
                    c.skipped_total,
                    c.frontier,
                    c.joined,
                    c.opened,
                    c.sold_out,
                    int(held or 0),
                    int(sold or 0),
                )
            )
            for item in raw:
                if item not in demo.batches:
                    t, frontier, admitted, skipped = (int(x) for x in item.split(":")[:4])
                    demo.batches[item] = Batch(t / 1000, frontier, admitted, skipped)
        next_at += every
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))


async def progress(demo: Demo, crowd: Sequence[Shopper], stop: asyncio.Event) -> None:
    """A live line every 2 s on stderr, so a person watching sees the sale move."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        if demo.samples:
            s = demo.samples[-1]
            done = sum(1 for x in crowd if x.outcome != "pending")
            print(
                f"  t={s.t - demo.opens_at:+6.1f}s  joined {s.joined:5d}  waiting "
                f"{s.waiting:5d}  active {s.active:4d}/{demo.plan.max_active}  admitted "
                f"{s.admitted:5d}  skipped {s.skipped:4d}  sold {s.sold:4d}  held "
                f"{s.held:3d}  shoppers done {done}/{len(crowd)}",
                file=sys.stderr,
                flush=True,
            )


async def drained(demo: Demo, deadline: float) -> bool:
    """Wait until the frontier has passed every place, or the stock is gone (admission stops:
    the places left were told so): abandoners at the tail of the line are only skipped (or
    admitted) once the admitter gets to them."""
    while time.time() < deadline:
        if demo.samples:
            s = demo.samples[-1]
            if s.opened and (s.frontier >= s.joined or s.sold_out):
                return True
        await asyncio.sleep(0.1)
    return False


async def settle(
    demo: Demo, procs: dict[str, subprocess.Popen[bytes]], admin: dict[str, str], deadline: float
) -> tuple[dict[str, Any] | None, float | None]:
    """Wait until no hold is open (the unpaid ones expire) and the persister has written
    every stream entry to PostgreSQL; returns the reconcile report from then (or the last
    one seen, with None for the time, when that did not happen by the deadline)."""
    report: dict[str, Any] | None = None
    url = f"/admin/sales/{demo.sale_id}/reconcile"
    while True:
        with contextlib.suppress(httpx.TransportError):
            response = await demo.http.get(url, headers=admin, timeout=10)
            if response.status_code == 200:
                report = response.json()
                stream, redis = report["stream"], report["redis"]
                if (
                    stream["lag"] == 0
                    and stream["pending"] == 0
                    and redis["open_holds"] == 0
                    and report["postgres"]["held"] == 0
                ):
                    return report, time.time()
        if time.time() >= deadline or procs["persister"].poll() is not None:
            return report, None
        await asyncio.sleep(0.25)


# -- subprocesses -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(settings: Settings, plan: Plan) -> dict[str, str]:
    """The caller's environment plus what the API, the admitter and the persister must agree
    on (keys, prefix, schema) and what a short local sale needs (fast ticks, expired holds
    swept within a quarter second, a dead persister's entries taken over after 2 s, no
    metrics port, no per-address join limit since every shopper is 127.0.0.1)."""
    env = dict(os.environ)
    # `flashsale api` empties this folder at start: never let it point at the caller's
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
            "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
            "FLASHSALE_ADMIN_TOKEN": settings.admin_token,
            "FLASHSALE_TOKEN_KEY": settings.token_key,
            "FLASHSALE_TOKEN_KEY_PREVIOUS": "",
            "FLASHSALE_LOG_LEVEL": "WARNING",
            "FLASHSALE_ADMITTER_TICK_MS": "50",
            "FLASHSALE_ADMITTER_REFRESH_SECONDS": "1",
            "FLASHSALE_METRICS_PORT": "0",
            "FLASHSALE_SWEEP_INTERVAL_MS": "250",
            "FLASHSALE_PERSISTER_CLAIM_IDLE_MS": "2000",
            "FLASHSALE_JOIN_LIMIT_PER_ADDRESS": str(plan.join_limit_per_address),
            "FLASHSALE_JOIN_BUCKETS": str(settings.join_buckets),
        }
    )
    return env


@contextlib.contextmanager
def processes(
    commands: dict[str, list[str]], env: dict[str, str]
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Start each command in its own session (so a Ctrl-C reaches only the demo, which then
    stops them in order) and always stop them: SIGTERM, then SIGKILL of the whole group (the
    API's workers included). Their output goes to stderr: stdout ends with the JSON line."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            procs[name] = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                start_new_session=True,
            )
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


async def wait_ready(
    http: httpx.AsyncClient, procs: dict[str, subprocess.Popen[bytes]], within: float
) -> None:
    deadline = time.monotonic() + within
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise DemoFailed(f"the {name} exited with status {proc.returncode} at start-up")
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/readyz", timeout=2)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise DemoFailed(f"the API was not ready within {within:.0f} s")
        await asyncio.sleep(0.1)


# -- the run ----------------------------------------------------------------------------------


def demo_settings(settings: Settings) -> Settings:
    """The caller's connections with fresh demo secrets. Redis keys go under `demo` and
    tables into the schema `flashsale_demo`, so the demo's admitter and persister see only the
    demo's sale and no other install's admitter or persister sees it; a prefix or schema the
    caller chose (tests, parallel demos) is kept."""
    prefix, schema = settings.redis_prefix, settings.database_schema
    if prefix == Settings.redis_prefix:  # the class attributes hold the defaults
        prefix = DEMO_PREFIX
    if schema == Settings.database_schema:
        schema = DEMO_SCHEMA
    return dataclasses.replace(
        settings,
        redis_prefix=prefix,
        database_schema=schema,
        admin_token=secrets.token_urlsafe(24),
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
    )


def sale_body(plan: Plan, sale_id: str, opens_at: float) -> dict[str, Any]:
    opens = datetime.fromtimestamp(opens_at, UTC)
    return {
        "id": sale_id,
        "name": "FlashSale demo",
        "stock": plan.stock,
        "opens_at": opens.isoformat(),
        "closes_at": (opens + timedelta(minutes=plan.sale_minutes)).isoformat(),
        "price_cents": plan.price_cents,
        "currency": "USD",
        "per_shopper_limit": plan.per_shopper_limit,
        "hold_seconds": plan.hold_seconds,
        "admission": {
            "batch_size": plan.batch_size,
            "batch_interval_ms": plan.batch_interval_ms,
            "max_active": plan.max_active,
            "admission_ttl_seconds": plan.admission_ttl_seconds,
            "abandon_after_seconds": plan.abandon_after_seconds,
        },
    }


@dataclass
class SaleResult:
    """What `run_sale` hands to `report`."""

    demo: Demo
    crowd: list[Shopper]
    final: Counters
    prequeue: int
    admitted_bits: dict[int, bool]  # shopper n -> Redis's admitted bit for their place
    places: dict[int, int]  # shopper n -> their 0-based place in line
    drained: bool
    finished_at: float
    port: int
    reconcile: dict[str, Any] | None = None  # GET /admin/sales/{id}/reconcile once settled
    settled_at: float | None = None  # no open hold left, the persister drained
    ledger: Ledger | None = None  # PostgreSQL's record of the sale


@dataclass(frozen=True)
class Ledger:
    """The sale as PostgreSQL records it, after the persister drained."""

    stock: int
    held: int
    sold: int
    orders: dict[str, tuple[str, str, int]]  # order id -> (status, reason, quantity)

    def count(self, status: str, reason: str | None = None) -> int:
        return sum(
            1
            for st, why, _ in self.orders.values()
            if st == status and (reason is None or why.startswith(reason))
        )


async def read_ledger(settings: Settings, sale_id: str) -> Ledger:
    conn = await asyncpg.connect(
        settings.database_url, server_settings={"search_path": settings.database_schema}
    )
    try:
        inventory = await conn.fetchrow(
            "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale_id
        )
        rows = await conn.fetch(
            "SELECT id::text AS id, status, coalesce(reason, '') AS reason,"
            " quantity FROM orders WHERE sale_id = $1",
            sale_id,
        )
    finally:
        await conn.close()
    if inventory is None:
        raise DemoFailed(f"PostgreSQL has no inventory for sale {sale_id}")
    return Ledger(
        inventory["stock"],
        inventory["held"],
        inventory["sold"],
        {r["id"]: (r["status"], r["reason"], r["quantity"]) for r in rows},
    )


async def run_sale(
    plan: Plan,
    settings: Settings,
    shoppers: int,
    port: int,
    procs: dict[str, subprocess.Popen[bytes]],
    after_admission: AfterAdmission,
    seed: int,
    made: list[str],
) -> SaleResult:
    """Create the sale (its id goes into `made`), release the crowd, watch the room, then
    read the final truth from Redis. The sale is closed on the way out, whatever happened."""
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    redis = await open_redis(settings)
    room = WaitingRoom(redis, settings, Signer(settings.signing_keys()))
    transport = KeepAliveTransport("127.0.0.1", port)
    # one client for the whole crowd: it must never keep cookies, or the visitor cookie of one
    # shopper would make the next one's join the same visitor
    async with httpx.AsyncClient(
        transport=transport,
        base_url=f"http://127.0.0.1:{port}",
        cookies=_NoCookies(),
        timeout=httpx.Timeout(15.0, connect=5.0),
    ) as http:
        demo = Demo(plan, settings, http, room, random.Random(seed), Gate(plan.in_flight))
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        stop = asyncio.Event()
        watchers: list[asyncio.Task[None]] = []
        try:
            await wait_ready(http, procs, within=30)
            demo.created_at = time.time()
            demo.opens_at = math.ceil(demo.created_at + plan.lead_seconds)
            stamp = datetime.fromtimestamp(demo.created_at, UTC).strftime("%Y%m%d-%H%M%S")
            demo.sale_id = await off_first_shard(room, f"demo-{stamp}")
            made.append(demo.sale_id)
            response = await http.post(
                "/admin/sales", headers=admin, json=sale_body(plan, demo.sale_id, demo.opens_at)
            )
            if response.status_code != 201:
                raise DemoFailed(
                    f"creating the sale answered {response.status_code}: {response.text[:300]}"
                )
            crowd = plan_shoppers(plan, shoppers, demo.rng, demo.created_at, demo.opens_at)
            watchers = [
                asyncio.create_task(watch_room(demo, stop)),
                asyncio.create_task(progress(demo, crowd, stop)),
            ]
            deadline = demo.created_at + plan.hard_timeout_seconds
            tasks = [asyncio.create_task(run_shopper(demo, s, after_admission)) for s in crowd]
            _, pending = await asyncio.wait(tasks, timeout=deadline - time.time())
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for s in crowd:
                if s.outcome == "pending":
                    s.outcome = "unfinished"
            was_drained = await drained(demo, min(deadline, time.time() + plan.drain_seconds))
            finished_at = time.time()
            reconciled, settled_at = await settle(
                demo, procs, admin, min(deadline, time.time() + plan.settle_seconds)
            )
            stop.set()
            await asyncio.gather(*watchers)
            final = await room.counters(demo.sale_id)
            view = await room.view(demo.sale_id, fresh=True)
            places = {s.n: place_of(view, s.index) for s in crowd if s.index is not None}
            return SaleResult(
                demo,
                crowd,
                final,
                view.prequeue,
                await _admitted_bits(demo, crowd),
                places,
                was_drained,
                finished_at,
                port,
                reconciled,
                settled_at,
                await read_ledger(settings, demo.sale_id),
            )
        finally:
            stop.set()
            for w in watchers:
                w.cancel()
            if demo.sale_id:  # closed, no admitter takes it up again
                with contextlib.suppress(Exception):
                    await http.post(f"/admin/sales/{demo.sale_id}/close", headers=admin, timeout=5)
            await close_shared()
            await redis.aclose()


async def off_first_shard(room: WaitingRoom, stem: str) -> str:
    """A fresh sale id; on a Redis Cluster, one whose keys live on a primary other than the
    first (the one serving slot 0), so the demo shows a sale on any shard working end to end."""
    nodes = await primaries(room.redis)
    while True:
        sale_id = f"{stem}-{secrets.token_hex(2)}"
        if len(nodes) == 1 or await node_of(room.redis, room.keys(sale_id).meta) != nodes[0]:
            return sale_id


async def remove_room(settings: Settings, sale_id: str) -> None:
    """Drop the sale's keys from Redis, and the simulated payment provider's records of its
    orders (they would stay a week), once the admitter and the persister are stopped (until
    then they may reinstall the room of a sale they still hold in their list of live ones).
    The closed sale and its orders stay in PostgreSQL, a record of the run.

    A persister keeps draining closed sales for a day and re-creates their order stream,
    empty, when it is gone: this run's persister did so for the earlier demo sales, so their
    empty streams, left without a room, go too."""
    redis = await open_redis(settings)
    try:
        room = WaitingRoom(redis, settings, Signer(settings.signing_keys()))
        await room.remove(sale_id)
        conn = await asyncpg.connect(
            settings.database_url, server_settings={"search_path": settings.database_schema}
        )
        try:
            orders = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id::text AS id FROM orders WHERE sale_id = $1", sale_id
                )
            ]
            earlier = [
                r["id"]
                for r in await conn.fetch(  # the persister's window is a day
                    "SELECT id FROM sales WHERE closed_at > now() - interval '2 days' AND id <> $1",
                    sale_id,
                )
            ]
        finally:
            await conn.close()
        await SimulatedProvider(redis, settings.redis_prefix).forget(orders)
        for old in earlier:
            keys = room.keys(old)
            if (
                not await redis.exists(keys.meta)
                and await redis.type(keys.orders_stream) == "stream"
                and await redis.xlen(keys.orders_stream) == 0
            ):
                await redis.unlink(keys.orders_stream)
    finally:
        await close_shared()
        await redis.aclose()


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


async def _admitted_bits(demo: Demo, crowd: Sequence[Shopper]) -> dict[int, bool]:
    """Whether Redis marked each shopper's place admitted: the server's side of the story."""
    joined = [s for s in crowd if s.index is not None]
    key = demo.room.keys(demo.sale_id).admitted
    async with demo.room.redis.pipeline(transaction=False) as pipe:
        for s in joined:
            pipe.getbit(key, s.index)
        bits = await pipe.execute()
    return {s.n: bool(bit) for s, bit in zip(joined, bits, strict=True)}


# -- the report -------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _r(value: float | None, scale: float = 1.0, digits: int = 1) -> float | None:
    return None if value is None else round(value * scale, digits)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def report(
    result: SaleResult, plan: Plan, shoppers: int, seed: int, started: float, cpu: dict[str, float]
) -> tuple[list[str], dict[str, Any], bool]:
    """The summary lines, the JSON figures and whether every check passed."""
    demo, crowd, final, bits = result.demo, result.crowd, result.final, result.admitted_bits
    opens = demo.opens_at
    by: dict[str, list[Shopper]] = {}
    for s in crowd:
        by.setdefault(s.outcome, []).append(s)

    def count(*outcomes: str) -> int:
        return sum(len(by.get(o, [])) for o in outcomes)

    admitted = [s for s in crowd if s.admitted_at is not None]
    abandoned = by.get("abandoned", [])
    abandoned_admitted = sum(1 for s in abandoned if bits.get(s.n))
    failed = count("error", "unfinished")
    # a waiter who kept polling may still lose their place, rightly, if they came back later
    # than the absence window (an overloaded machine); not if they were told to wait that
    # long, nor if the server cannot have gone that long without seeing them
    absent_after = plan.absent_after_seconds
    skipped_polling = [s for s in by.get("expired", []) if not bits.get(s.n)]
    missed = [s for s in by.get("expired", []) if bits.get(s.n)]  # polled after it ended
    told_too_long = [s for s in skipped_polling if s.told > absent_after]
    seen_in_time = [
        s for s in skipped_polling if s not in told_too_long and s.silence <= absent_after
    ]
    late = len(skipped_polling) - len(told_too_long) - len(seen_in_time)
    missed_in_time = [s for s in missed if s.silence <= plan.admission_ttl_seconds]
    wronged = len(told_too_long) + len(seen_in_time) + len(missed_in_time)
    # the stock gone: refused at the door (no place), or told so while in line
    turned_away = [s for s in by.get("sold_out", []) if s.index is None]
    told_sold_out = [s for s in by.get("sold_out", []) if s.index is not None]
    # admitted by Redis, but the stock was gone (held by others) by the time they looked
    sold_out_admitted = sum(1 for s in told_sold_out if bits.get(s.n))
    unreached = [s for s in crowd if s.n in result.places and result.places[s.n] >= final.frontier]
    stayed = shoppers - len(abandoned) - failed - len(turned_away)
    prequeue = result.prequeue
    joined = final.joined
    max_active_seen = max((x.active for x in demo.samples), default=0)
    within_limit = max_active_seen <= plan.max_active
    pre_waits = [
        s.admitted_at - opens
        for s in admitted
        if s.index is not None and s.index < prequeue and s.admitted_at is not None
    ]
    post_waits = [
        s.admitted_at - s.joined_at
        for s in admitted
        if s.index is not None
        and s.index >= prequeue
        and s.admitted_at is not None
        and s.joined_at is not None
    ]
    noticed = [
        s.noticed_at - s.admitted_at
        for s in admitted
        if s.noticed_at is not None and s.admitted_at is not None
    ]
    batches = sorted(demo.batches.values(), key=lambda b: b.t)
    admitting = [b for b in batches if b.admitted]
    full_at = next((x.t for x in demo.samples if x.active >= plan.max_active), None)
    opened_at = next((x.t for x in demo.samples if x.opened), None)
    queued = {kind: percentile(demo.queued.get(kind, []), 0.95) for kind in ("join", "status")}
    last_join = max(demo.joins, default=None)
    duration = time.time() - started
    bits_set = sum(bits.values())
    redis_agrees = (
        bits_set == final.admitted_total
        and len(bits) - bits_set == final.skipped_total + len(unreached)
        and all(bits.get(s.n) for s in admitted)
        and not any(bits.get(s.n) for s in unreached)
    )
    # places the frontier never reached are resolved too when the stock ran out: admission
    # stopped and their owners were told (or had left the line)
    resolved = (
        result.drained
        and joined == len(bits)
        and final.admitted_total + final.skipped_total == final.frontier
        and (
            final.frontier >= joined
            or (
                final.sold_out
                and len(unreached) == joined - final.frontier
                and all(s.outcome in ("sold_out", "abandoned") for s in unreached)
            )
        )
    )

    checks = [
        ("the sale opened and admitted shoppers", bool(admitted)),
        (
            f"active shoppers never exceeded the limit ({max_active_seen} <= {plan.max_active})",
            within_limit,
        ),
        (f"no shopper hit an error ({failed})", failed == 0),
        (
            f"every shopper who kept polling in time was admitted or told the stock was gone "
            f"({len(admitted)} + {len(told_sold_out)} of {stayed}"
            + (
                f"; {late + len(missed) - len(missed_in_time)} came back too late and rightly "
                f"lost their turn"
                if late or missed
                else ""
            )
            + ")",
            wronged == 0
            and len(admitted) + len(told_sold_out)
            == stayed - late - (len(missed) - len(missed_in_time)),
        ),
        (
            f"every place in line was resolved (admitted {final.admitted_total} + skipped "
            f"{final.skipped_total}"
            + (f" + {len(unreached)} not reached once sold out" if unreached else "")
            + f" = joined {joined})",
            resolved,
        ),
        (
            f"Redis agrees with the shoppers (admitted {final.admitted_total} = {len(admitted)} "
            f"seen + {abandoned_admitted} abandoners reached before their absence showed"
            + (f" + {len(missed)} who polled too late to see it" if missed else "")
            + (f" + {sold_out_admitted} who found it sold out" if sold_out_admitted else "")
            + f"; skipped {final.skipped_total})",
            redis_agrees,
        ),
    ]
    buying, bought_figures, bought_checks = purchase_report(result, plan)
    checks += bought_checks
    ok = all(passed for _, passed in checks)

    lat = {
        kind: demo.latency.get(kind, [])
        for kind in ("join", "status", "leave", "hold", "pay", "cancel")
    }
    figures: dict[str, Any] = {
        "ok": ok,
        "sale": demo.sale_id,
        "shoppers": shoppers,
        "admitted": len(admitted),
        "max_active_seen": max_active_seen,
        "max_active": plan.max_active,
        "within_limit": within_limit,
        **bought_figures,
        "skipped": final.skipped_total,
        "abandoned": len(abandoned),
        "abandoned_admitted": abandoned_admitted,
        "left": count("left"),
        "no_shows": count("no_show"),
        "walked_away": count("walked_away"),
        "turned_away": len(turned_away),
        "told_sold_out": len(told_sold_out),
        "skipped_while_polling": len(skipped_polling),
        "skipped_wrongly": len(told_too_long) + len(seen_in_time),
        "missed_admission": len(missed),
        "prequeue": prequeue,
        "joined_after_open": joined - prequeue,
        "admitted_server": final.admitted_total,
        "rate_limited": demo.rate_limited,
        "retries": demo.retries,
        "errors": failed,
        "batches": len(batches),
        "join_ms_p50": _r(percentile(lat["join"], 0.5), 1000),
        "join_ms_p95": _r(percentile(lat["join"], 0.95), 1000),
        "status_ms_p50": _r(percentile(lat["status"], 0.5), 1000),
        "status_ms_p95": _r(percentile(lat["status"], 0.95), 1000),
        "poll_queue_ms_p95": _r(queued["status"], 1000),
        "join_queue_ms_p95": _r(queued["join"], 1000),
        "last_join_s": _r(None if last_join is None else last_join - opens),
        "wait_prequeue_s_p50": _r(percentile(pre_waits, 0.5)),
        "wait_prequeue_s_p95": _r(percentile(pre_waits, 0.95)),
        "wait_after_open_s_p50": _r(percentile(post_waits, 0.5)),
        "wait_after_open_s_p95": _r(percentile(post_waits, 0.95)),
        "requests": sum(len(v) for v in demo.latency.values()),
        "cpu_demo_seconds": round(cpu["demo"], 1),
        "cpu_services_seconds": round(cpu["services"], 1),
        "seed": seed,
        "duration_seconds": round(duration, 1),
        **demo.extra,
    }

    def at(t: float | None) -> str:
        return "      -" if t is None else f"{t - opens:+7.1f}s"

    sold_out_at = next((x for x in demo.samples if x.sold_out), None)
    all_paid_at = next((x.t for x in demo.samples if x.sold >= plan.stock), None)
    events: list[tuple[float | None, str]] = [
        (demo.created_at, "sale created; shoppers start arriving"),
        (
            opens,
            f"opening (the admitter drew the pre-queue at {at(opened_at).strip()}): "
            f"{prequeue} places shuffled",
        ),
        (
            admitting[0].t if admitting else None,
            f"first batch: {admitting[0].admitted if admitting else 0} admitted",
        ),
        (full_at, f"{plan.max_active} active: from here the limit paces the line")
        if full_at is not None
        else (None, f"the limit of {plan.max_active} active was never reached"),
        (
            last_join,
            f"last join answered ({joined - prequeue} joined after the opening; "
            f"arrivals were planned until {at(opens + plan.after_open_seconds).strip()})",
        ),
        (admitting[-1].t if admitting else None, f"last admission; {len(batches)} batches in all"),
        (
            result.finished_at,
            "every shopper done, every place resolved"
            if result.drained
            else "gave up waiting for the line to resolve",
        ),
        (
            result.settled_at,
            "no hold left open, the persister drained: PostgreSQL caught up"
            if result.settled_at is not None
            else "gave up waiting for open holds to expire and the persister to drain",
        ),
    ]
    if sold_out_at is not None:
        events.append(
            (
                sold_out_at.t,
                f"sold out for the first time: {sold_out_at.sold} paid "
                f"for, {sold_out_at.held} in holds",
            )
        )
    if all_paid_at is not None:
        events.append((all_paid_at, f"all {plan.stock} units paid for"))
    # in time order; an event that never happened stays where the old fixed order had it
    first_batch = admitting[0].t if admitting else None
    events.sort(
        key=lambda e: (
            e[0]
            if e[0] is not None
            else (first_batch if "never reached" in e[1] and first_batch is not None else math.inf)
        )
    )
    lines = [
        f"FlashSale demo: sale {demo.sale_id}, {shoppers} shoppers, stock {plan.stock}",
        f"  API on 127.0.0.1:{result.port} (2 workers) + 1 admitter + 1 persister; Redis "
        f"prefix {demo.settings.redis_prefix!r}, PostgreSQL schema "
        f"{demo.settings.database_schema!r}; load average at start {cpu['load']:.1f} on "
        f"{os.cpu_count()} CPUs",
        f"  admission: batches of {plan.batch_size} every {plan.batch_interval_ms} ms, at most "
        f"{plan.max_active} active, admissions last {plan.admission_ttl_seconds} s, absent "
        f"after {plan.abandon_after_seconds} s",
        "",
        "Timeline (t = 0 at the opening)",
        *(f"  {at(t)}  {text}" for t, text in events),
        "",
        *_timeline_table(demo, batches),
        "",
        "Shoppers",
        f"  joined {joined} (pre-queue {prequeue}, after the opening {joined - prequeue}); "
        f"turned away at the door once sold out {len(turned_away)}; 429s "
        f"{demo.rate_limited}, retries {demo.retries}, errors {failed}",
        f"  admitted {len(admitted)}: {count('left')} shopped and left, "
        f"{count('walked_away')} walked away from their hold, {count('no_show')} never came "
        f"back (their admissions expired)",
        f"  told the stock was gone while in line {len(told_sold_out)}"
        + (
            f" ({sold_out_admitted} of them admitted, but every unit was held or sold by the "
            f"time they looked)"
            if sold_out_admitted
            else ""
        ),
        f"  abandoned the line {len(abandoned)}: {len(abandoned) - abandoned_admitted} skipped "
        f"by the admitter, {abandoned_admitted} reached before their absence showed",
        f"  max active seen {max_active_seen} / limit {plan.max_active} "
        f"({'within' if within_limit else 'OVER'} the limit; Redis sampled every 100 ms)",
        "",
        "Latency              p50       p95    count",
        *(
            f"  {kind:<12} {_fmt(_r(percentile(v, 0.5), 1000)):>7} ms "
            f"{_fmt(_r(percentile(v, 0.95), 1000)):>6} ms {len(v):>8}"
            for kind, v in lat.items()
        ),
        f"  queued in the demo client before sending, p95: polls "
        f"{_fmt(_r(queued['status'], 1000))} ms, joins {_fmt(_r(queued['join'], 1000))} ms",
        f"  CPU: demo client {cpu['demo']:.0f} s, API + admitter + persister "
        f"{cpu['services']:.0f} s, for {sum(len(v) for v in demo.latency.values())} requests",
        "Wait for admission   p50       p95",
        f"  pre-queue    {_fmt(_r(percentile(pre_waits, 0.5))):>7} s  "
        f"{_fmt(_r(percentile(pre_waits, 0.95))):>6} s   from the opening",
        f"  after open   {_fmt(_r(percentile(post_waits, 0.5))):>7} s  "
        f"{_fmt(_r(percentile(post_waits, 0.95))):>6} s   from arriving",
        f"  noticed      {_fmt(_r(percentile(noticed, 0.5))):>7} s  "
        f"{_fmt(_r(percentile(noticed, 0.95))):>6} s   admission to the poll that saw it",
        "",
        *buying,
        "",
        "Checks",
        *(f"  [{'ok' if passed else 'FAIL'}] {text}" for text, passed in checks),
    ]
    if skipped_polling or missed:
        lines.append(
            f"    {len(skipped_polling)} shoppers lost their place although they kept polling: "
            f"{late} came back after more than {absent_after:g} s of silence (queued in this "
            f"overloaded client: correct to skip them); {len(told_too_long)} had been told to "
            f"wait longer than that; {len(seen_in_time)} were seen within it. "
            f"{len(missed)} polled too late to see their admission "
            f"({len(missed_in_time)} of them within the admission's "
            f"{plan.admission_ttl_seconds} s)"
        )
    for s in [*by.get("error", []), *by.get("unfinished", [])][:5]:
        lines.append(f"    shopper {s.n}: {s.outcome} {s.error or ''}")
    odd = {k: len(v) for k, v in by.items() if k == "closed"}
    if odd:
        lines.append(f"    unexpected outcomes: {odd}")
    lines += ["", f"{'OK' if ok else 'FAILED'} in {duration:.1f} s"]
    return lines, figures, ok


def purchase_report(
    result: SaleResult, plan: Plan
) -> tuple[list[str], dict[str, Any], list[tuple[str, bool]]]:
    """The purchase section: what the shoppers saw, squared with PostgreSQL (read after the
    persister drained) and with Redis (through reconcile). Returns lines, figures, checks."""
    demo, ledger, reconciled = result.demo, result.ledger, result.reconcile
    co = demo.checkout
    if ledger is None:  # the sale never got that far
        ledger = Ledger(plan.stock, 0, 0, {})
    stock, held, sold = ledger.stock, ledger.held, ledger.sold
    oversold = max(0, sold + held - stock)
    confirmed_db = {oid for oid, (status, _, _) in ledger.orders.items() if status == "confirmed"}
    orders_in_db = sum(q for status, _, q in ledger.orders.values() if status == "confirmed")
    kept = set(co.confirmed) - set(co.cancelled)
    paid_once = len(co.confirmed) == len(set(co.confirmed))
    expected = co.expected()
    mismatched = [
        oid
        for oid, (status, reason) in expected.items()
        if oid not in ledger.orders
        or ledger.orders[oid][0] != status
        or not ledger.orders[oid][1].startswith(reason)
    ]
    unknown = set(ledger.orders) - set(co.held)  # in PostgreSQL, but no shopper held it
    unended = set(co.held) - set(expected)  # held, but no shopper saw how it ended
    reconcile_ok = bool(reconciled and reconciled.get("ok"))
    differences = (reconciled or {}).get("differences") or (
        [] if reconciled else ["no reconcile report"]
    )
    stream = (reconciled or {}).get("stream") or {}
    expired = ledger.count("released", "hold expired")
    cancelled = ledger.count("cancelled")
    declined = ledger.count("released", "payment declined")
    failed = ledger.count("failed")
    settled = result.settled_at
    hold_lat, pay_lat = demo.latency.get("hold", []), demo.latency.get("pay", [])
    refused = dict(co.refused.most_common())
    figures: dict[str, Any] = {
        "stock": stock,
        "sold": sold,
        "oversold": oversold,
        "orders_in_db": orders_in_db,
        "holds_expired": expired,
        "cancelled": cancelled,
        "declined": declined,
        "failed": failed,
        "reconcile_ok": reconcile_ok,
        "held_in_db": held,
        "orders": len(ledger.orders),
        "holds": len(co.held),
        "paid": len(co.confirmed),
        "hold_refusals": refused,
        "hold_replays": co.replays,
        "hold_replays_same": co.replays_same,
        "persister_drained": settled is not None,
        "drained_s": _r(None if settled is None else settled - demo.opens_at),
        "hold_ms_p50": _r(percentile(hold_lat, 0.5), 1000),
        "hold_ms_p95": _r(percentile(hold_lat, 0.95), 1000),
        "pay_ms_p50": _r(percentile(pay_lat, 0.5), 1000),
        "pay_ms_p95": _r(percentile(pay_lat, 0.95), 1000),
    }
    refusal_text = ", ".join(f"{code.replace('_', ' ')} {n}" for code, n in refused.items())
    lines = [
        f"Purchases (stock {plan.stock} at ${plan.price_cents / 100:.2f}, at most "
        f"{plan.per_shopper_limit} per shopper, holds last {plan.hold_seconds} s)",
        f"  holds {len(co.held)} ({co.units_held} units); refused: {refusal_text or 'none'}",
        f"  {co.replays} holds sent again with the same Idempotency-Key: the same hold came "
        f"back {co.replays_same} times"
        + (
            f" ({co.replays_late} more sent too late: the admission had expired)"
            if co.replays_late
            else ""
        ),
        f"  paid {len(co.confirmed)} orders ({co.units_confirmed} units); declined "
        f"{len(co.declined)} ({co.retried} tried again); {len(co.walked_away)} holds left "
        f"unpaid; {len(co.cancelled)} cancelled after paying (refunded); {len(co.expired)} "
        f"expired before paying; {len(co.failed)} refused by the database",
        f"  PostgreSQL: sold {sold} + held {held} of {stock} (oversold {oversold}); "
        f"{len(confirmed_db)} confirmed orders = {orders_in_db} units; released at expiry "
        f"{expired}, declined {declined}, cancelled {cancelled}, failed {failed}",
        f"  persister: stream of {stream.get('length', '?')} entries, lag "
        f"{stream.get('lag', '?')}, pending {stream.get('pending', '?')}; reconcile "
        + (
            "ok: Redis and PostgreSQL agree"
            if reconcile_ok
            else "FAILED: " + "; ".join(differences)
        ),
    ]
    for oid in mismatched[:5]:
        lines.append(
            f"    order {oid}: shopper saw {expected[oid]}, PostgreSQL has "
            f"{ledger.orders.get(oid, 'nothing')}"
        )
    checks = [
        (
            f"nothing oversold (PostgreSQL: sold {sold} + held {held} <= stock {stock})",
            oversold == 0,
        ),
        (
            f"every unit sold is in a confirmed order in PostgreSQL ({orders_in_db} units in "
            f"orders = sold {sold})",
            orders_in_db == sold,
        ),
        (
            f"every purchase a shopper saw confirmed is in PostgreSQL, exactly once "
            f"({len(co.confirmed)} paid - {len(co.cancelled)} cancelled = {len(kept)} = "
            f"{len(confirmed_db)} confirmed orders)",
            paid_once and kept == confirmed_db,
        ),
        (
            f"every order ended in PostgreSQL as its shopper saw it ({len(expected)} orders; "
            f"{len(co.walked_away)} unpaid holds expired back to stock)",
            not mismatched and not unknown and not unended,
        ),
        (
            f"a hold sent again with its Idempotency-Key is the same hold ({co.replays_same} of "
            f"{co.replays})",
            co.replays_same == co.replays,
        ),
        (
            "no hold left open and the persister drained ("
            + (f"at {settled - demo.opens_at:+.1f}s" if settled is not None else "not in time")
            + ")",
            settled is not None,
        ),
        ("reconcile: Redis agrees with PostgreSQL", reconcile_ok),
    ]
    return lines, figures, checks


def _timeline_table(demo: Demo, batches: Sequence[Batch]) -> list[str]:
    """Admissions per time slice from the opening, with the room's peak active count."""
    if not demo.samples:
        return []
    end = demo.samples[-1].t
    width = max(2.0, math.ceil((end - demo.opens_at) / 12))
    lines = ["    from t   admitted  skipped  batches  peak active  waiting at end  sold  held"]
    start = demo.opens_at
    while start < end:
        stop = start + width
        in_slice = [b for b in batches if start <= b.t < stop]
        samples = [x for x in demo.samples if start <= x.t < stop]
        if samples:
            lines.append(
                f"  {start - demo.opens_at:+7.0f}s {sum(b.admitted for b in in_slice):9d}"
                f" {sum(b.skipped for b in in_slice):8d} {len(in_slice):8d}"
                f" {max(x.active for x in samples):12d} {samples[-1].waiting:15d}"
                f" {samples[-1].sold:5d} {samples[-1].held:5d}"
            )
        start = stop
    return lines


def run(
    settings: Settings,
    shoppers: int = 3000,
    *,
    after_admission: AfterAdmission = shop,
    plan: Plan | None = None,
) -> int:
    """Run the demo sale; prints the summary, then the JSON line. 0 when every check passed."""
    started = time.time()
    plan = plan or Plan()
    if shoppers < 1:
        print("flashsale demo: --shoppers must be at least 1", file=sys.stderr)
        return 2
    settings = demo_settings(settings)
    for noisy in ("httpx", "httpcore"):  # a log line per request would drown everything
        logging.getLogger(noisy).setLevel(logging.WARNING)
    seed = secrets.randbits(32)
    load = os.getloadavg()[0]
    port = free_port()
    python = [sys.executable, "-m", "flashsale.cli"]
    commands = {
        "API": [*python, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        "admitter": [*python, "admitter"],
        "persister": [*python, "persister"],
    }
    print(
        f"FlashSale demo: starting the API on 127.0.0.1:{port}, an admitter and a persister "
        f"(Redis prefix {settings.redis_prefix!r}, PostgreSQL schema "
        f"{settings.database_schema!r}), then {shoppers} shoppers (progress on stderr)",
        flush=True,
    )
    made: list[str] = []
    try:
        asyncio.run(migrate(settings))  # `make demo` migrates first; a no-op when up to date
        with processes(commands, child_env(settings, plan)) as procs, _runner() as runner:
            result = runner.run(
                run_sale(plan, settings, shoppers, port, procs, after_admission, seed, made)
            )
    except Exception as exc:  # still end with the JSON line: scripts read nothing else
        if not isinstance(exc, DemoFailed):
            traceback.print_exc()
        print(f"flashsale demo: {exc}", file=sys.stderr)
        print(
            json.dumps(
                {
                    "ok": False,
                    "shoppers": shoppers,
                    "admitted": 0,
                    "max_active_seen": 0,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        )
        return 1
    except asyncio.CancelledError:  # SIGTERM; the processes are stopped by now
        print("flashsale demo: stopped", file=sys.stderr)
        return 143
    finally:
        if made:
            with contextlib.suppress(Exception):
                asyncio.run(remove_room(settings, made[0]))
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cpu = {
        "demo": own.ru_utime + own.ru_stime,
        "services": children.ru_utime + children.ru_stime,
        "load": load,
    }
    lines, figures, ok = report(result, plan, shoppers, seed, started, cpu)
    print("\n".join(lines))
    print(json.dumps(figures, separators=(",", ":")), flush=True)
    return 0 if ok else 1


@contextlib.contextmanager
def _runner() -> Iterator[asyncio.Runner]:
    """uvloop when available: the crowd's HTTP client is the busiest process of the demo."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m loadtest.demo [--shoppers N]` (`make demo`): settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.demo", description=__doc__)
    parser.add_argument("--shoppers", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"flashsale demo: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    return run(settings, shoppers=args.shoppers)


if __name__ == "__main__":
    sys.exit(main())
