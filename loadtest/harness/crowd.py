"""The simulated shoppers, as browsers and apps behave: arrive, join the waiting room, poll at
the pace the server asks (echoing the heartbeat it hands out), and once admitted hold stock with
an Idempotency-Key, pay (a few are declined, a few walk away from their hold, a few cancel after
paying) and leave. Requests go through an in-flight gate over keep-alive connections; a 429
waits out its Retry-After, and transport errors and 5xx are retried when repeating is harmless
(a hold is sent again with the same Idempotency-Key, as real clients do).

`Crowd` holds the shared state of one sale's crowd: the client, the plan, every latency and
every answer over time (`events`: what the chaos run counts 5xx with), and `Checkout`, what the
shoppers saw of their orders (`Checkout.seen()` is what `invariants` judges). `run_shopper`
is one shopper's visit; what an admitted shopper does is `shop`, or any `AfterAdmission`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpcore
import httpx
import redis.exceptions

from flashsale.config import Settings
from flashsale.waiting_room.keys import HEARTBEAT_SLICES
from flashsale.waiting_room.redis_client import texts
from flashsale.waiting_room.room import NoSuchRoom, WaitingRoom
from flashsale.waiting_room.tokens import TICKET
from loadtest.harness.invariants import Seen
from loadtest.harness.processes import Procs, log

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
    dealt with while the demo watches. The chaos run keeps the shape with fewer shoppers and
    clients that keep retrying through an outage."""

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
    # a request that found no server, or a 5xx, is sent again (when that is harmless) this
    # many times, waiting twice as long each time up to `retry_cap_seconds` (or the
    # Retry-After the server asked for)
    retries: int = 3
    retry_cap_seconds: float = 0.8
    rejoin: bool = False  # a join whose answer was lost is sent again (a place may be doubled)
    name: str = "FlashSale demo"

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


class SaleFailed(RuntimeError):
    """The harness could not run the sale at all (a process died, the API never got ready...)."""


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
            content=request.stream,
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
    quantities: dict[str, int] = field(default_factory=dict)  # order -> units, as answered
    keys: dict[str, set[str]] = field(default_factory=dict)  # Idempotency-Key -> orders named

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

    def seen(self) -> Seen:
        """What the shoppers were told, as `invariants` judges it."""
        return Seen(
            confirmed=[(o, self.quantities.get(o, 0)) for o in self.confirmed],
            ends={o: end for o, end in self.expected().items() if end[0] != "confirmed"},
            keys={k: set(v) for k, v in self.keys.items()},
        )


@dataclass
class Crowd:
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
    # every answer: (epoch seconds, kind, HTTP status or 0 when no answer came, and for a
    # 5xx who gave it and why: `answered_by`)
    events: list[tuple[float, str, int, str]] = field(default_factory=list)
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
        and a second join would make a ghost one, unless the plan says to `rejoin`). Every
        answer, or its absence, goes into `events`."""
        attempt = 0
        sent_at = 0.0
        idempotent = idempotent or (kind == "join" and self.plan.rejoin)
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
                    self.events.append((time.time(), kind, 0, ""))
                    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                    if attempt >= self.plan.retries or not (idempotent or unsent):
                        raise
                else:
                    self.events.append(
                        (time.time(), kind, response.status_code, answered_by(response))
                    )
                    self.latency.setdefault(kind, []).append(time.perf_counter() - started)
                    response.extensions["sent_at"] = sent_at
            if response is not None and response.status_code == 429:
                self.rate_limited += 1
                await asyncio.sleep(_retry_after(response) + self.rng.uniform(0, 0.5))
                continue
            retryable = response is None or (response.status_code >= 500 and idempotent)
            if not retryable or attempt >= self.plan.retries:
                assert response is not None
                return response
            attempt += 1
            self.retries += 1
            backoff = min(self.plan.retry_cap_seconds, 0.1 * 2**attempt)
            if response is not None and "retry-after" in response.headers:
                backoff = _retry_after(response)
            await asyncio.sleep(backoff * self.rng.uniform(0.8, 1.2))

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
            "Idempotency-Key": f"shopper-{shopper.n}-{secrets.token_hex(8)}",
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
        key = headers["Idempotency-Key"]
        self.checkout.keys.setdefault(key, set()).add(order["id"])
        self.checkout.quantities[order["id"]] = int(order["quantity"])
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
                self.checkout.keys[key].add(replay["id"])
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


def answered_by(response: httpx.Response) -> str:
    """For a 5xx, who answered and why: `api <code>` with ` retry-after` when it says when to
    come back (the API's designed answer to an outage), or `haproxy <code>` (no server to
    take it, or a server's bad answer: HAProxy sets no X-Request-ID on its own answers);
    "" for anything else."""
    if response.status_code < 500:
        return ""
    origin = "api" if "x-request-id" in response.headers else "haproxy"
    retry = " retry-after" if origin == "api" and "retry-after" in response.headers else ""
    return f"{origin} {_error_code(response)}{retry}"


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

AfterAdmission = Callable[["Crowd", Shopper, dict[str, Any]], Awaitable[None]]


async def shop(crowd: Crowd, shopper: Shopper, admitted: dict[str, Any]) -> None:
    """An admitted shopper's visit: browse a moment, hold a unit (sometimes two), pay, then
    leave so the slot frees at once. Some are declined (the hold is released; half of them
    try once more), some pay and then cancel (refund: the stock returns), some walk away from
    their hold (it must expire and return to stock) and a few never come back at all; only
    their admission's expiry frees the slot of those two. Sold out: they leave."""
    if shopper.no_show:
        shopper.outcome = "no_show"
        return
    plan, rng = crowd.plan, crowd.rng
    await asyncio.sleep(rng.uniform(*plan.shop_seconds))
    token = admitted["admission_token"]
    order = await crowd.hold(
        shopper, token, shopper.units, lose_answer=rng.random() < plan.lost_answer_share
    )
    if order is not None and shopper.intent == WALK_AWAY:
        crowd.checkout.walked_away.append(order["id"])
        shopper.outcome = shopper.purchase = "walked_away"
        return
    if order is not None:
        await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
        card = "tok_decline" if shopper.intent == DECLINE else "tok_approve"
        paid = await crowd.pay(shopper, order, card)
        if paid == "declined" and rng.random() < plan.retry_after_decline:
            crowd.checkout.retried += 1
            await asyncio.sleep(rng.uniform(*plan.new_card_seconds))
            order = await crowd.hold(shopper, token, shopper.units)
            if order is not None:
                await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
                paid = await crowd.pay(shopper, order, "tok_approve")
        if paid == "confirmed" and shopper.intent == CANCEL and order is not None:
            await asyncio.sleep(rng.uniform(*plan.checkout_seconds))
            await crowd.cancel(shopper, order)
            paid = "cancelled"
        shopper.purchase = {"confirmed": "bought"}.get(paid, paid)
    await crowd.leave(shopper)
    shopper.outcome = "left"


async def run_shopper(crowd: Crowd, shopper: Shopper, after_admission: AfterAdmission) -> None:
    """Arrive, join, poll until the room decides, then hand over to `after_admission`."""
    try:
        await asyncio.sleep(max(0.0, shopper.arrive_at - time.time()))
        shopper.joined_at = time.time()
        response = await crowd.call(
            "join", "POST", f"/api/sales/{crowd.sale_id}/join", priority=JOIN, idempotent=False
        )
        if response.status_code == 409:  # closed or sold out before this shopper got in
            shopper.outcome = str(response.json().get("state", "closed"))
            return
        body = _expect(response, 200, 201)
        crowd.joins.append(time.time())
        seen = response.extensions["sent_at"]
        shopper.visitor, shopper.ticket = body["visitor_id"], body["ticket"]
        shopper.index = crowd.room.signer.verify(
            shopper.ticket, kind=TICKET, sale=crowd.sale_id, now=time.time()
        ).index
        while not _decided(body):
            told = float(body.get("poll_after_seconds") or 1.0)
            delay = crowd.poll_delay(told)
            if shopper.patience is not None:
                give_up = shopper.joined_at + shopper.patience
                if time.time() + delay >= give_up:
                    await asyncio.sleep(max(0.0, give_up - time.time()))
                    shopper.outcome = "abandoned"
                    return
            await asyncio.sleep(delay)
            params = {} if body.get("heartbeat") is None else {"hb": body["heartbeat"]}
            response = await crowd.call(
                "status",
                "GET",
                f"/api/sales/{crowd.sale_id}/status",
                priority=POLL,
                headers=crowd.ticket_headers(shopper),
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
        shopper.admitted_at = until - crowd.plan.admission_ttl_seconds
        await after_admission(crowd, shopper, body)
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

# what a sampler meets while the harness itself stops or stalls Redis
REDIS_TROUBLE = (NoSuchRoom, redis.exceptions.RedisError, OSError, TimeoutError)


async def watch_room(crowd: Crowd, stop: asyncio.Event, every: float = 0.1) -> None:
    """Sample the room from Redis every 100 ms: the active count (the limit under test), the
    line's progress, the stock, and each admission batch (Redis keeps only the last 64, so
    collect them as they come). A Redis that does not answer is simply not sampled."""
    keys = crowd.room.keys(crowd.sale_id)
    next_at = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(*REDIS_TROUBLE):  # the clients' own timeouts bound a stall
            c = await crowd.room.counters(crowd.sale_id)
            raw = texts(await crowd.room.redis.lrange(keys.batches, 0, -1))
            held, sold = await crowd.room.redis.hmget(keys.inventory, ["held", "sold"])
            crowd.samples.append(
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
                if item not in crowd.batches:
                    t, frontier, admitted, skipped = (int(x) for x in item.split(":")[:4])
                    crowd.batches[item] = Batch(t / 1000, frontier, admitted, skipped)
        next_at = max(next_at + every, time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))


async def progress(
    crowd: Crowd, shoppers: Sequence[Shopper], stop: asyncio.Event, every: float = 2.0
) -> None:
    """A live line every 2 s on stderr, so a person watching sees the sale move."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if crowd.samples:
            s = crowd.samples[-1]
            done = sum(1 for x in shoppers if x.outcome != "pending")
            log(
                f"  t={time.time() - crowd.opens_at:+6.1f}s  joined {s.joined:5d}  waiting "
                f"{s.waiting:5d}  active {s.active:4d}/{crowd.plan.max_active}  admitted "
                f"{s.admitted:5d}  skipped {s.skipped:4d}  sold {s.sold:4d}  held "
                f"{s.held:3d}  shoppers done {done}/{len(shoppers)}"
            )


async def drained(crowd: Crowd, deadline: float) -> bool:
    """Wait until the frontier has passed every place, or the stock is gone (admission stops:
    the places left were told so): abandoners at the tail of the line are only skipped (or
    admitted) once the admitter gets to them."""
    while time.time() < deadline:
        if crowd.samples:
            s = crowd.samples[-1]
            if s.opened and (s.frontier >= s.joined or s.sold_out):
                return True
        await asyncio.sleep(0.1)
    return False


def settled(report: dict[str, Any]) -> bool:
    """Whether a reconcile report shows a sale at rest: no hold open in either store and
    every stream entry written to PostgreSQL."""
    stream, redis_side = report["stream"], report["redis"]
    return bool(
        stream["lag"] == 0
        and stream["pending"] == 0
        and redis_side["open_holds"] == 0
        and report["postgres"]["held"] == 0
    )


async def settle(
    crowd: Crowd,
    admin: dict[str, str],
    deadline: float,
    alive: Callable[[], bool] = lambda: True,
) -> tuple[dict[str, Any] | None, float | None]:
    """Wait until no hold is open (the unpaid ones expire) and the persister has written
    every stream entry to PostgreSQL; returns the reconcile report from then (or the last
    one seen, with None for the time, when that did not happen by the deadline or `alive`
    says the persister is gone)."""
    report: dict[str, Any] | None = None
    url = f"/admin/sales/{crowd.sale_id}/reconcile"
    while True:
        with contextlib.suppress(httpx.TransportError):
            response = await crowd.http.get(url, headers=admin, timeout=10)
            if response.status_code == 200:
                report = response.json()
                assert report is not None
                if settled(report):
                    return report, time.time()
        if time.time() >= deadline or not alive():
            return report, None
        await asyncio.sleep(0.25)


async def wait_ready(http: httpx.AsyncClient, procs: Procs, within: float) -> None:
    """Wait until the API answers /readyz, failing at once if one of `procs` died."""
    deadline = time.monotonic() + within
    while True:
        try:
            procs.check()
        except RuntimeError as exc:
            raise SaleFailed(f"a process exited at start-up: {exc}") from None
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/readyz", timeout=2)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise SaleFailed(f"the API was not ready within {within:.0f} s")
        await asyncio.sleep(0.1)


def sale_body(plan: Plan, sale_id: str, opens_at: float) -> dict[str, Any]:
    opens = datetime.fromtimestamp(opens_at, UTC)
    return {
        "id": sale_id,
        "name": plan.name,
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


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


@contextlib.asynccontextmanager
async def opened(
    plan: Plan, settings: Settings, port: int, seed: int, host: str = "127.0.0.1"
) -> AsyncIterator[Crowd]:
    """A crowd's client on the API at `host`:`port`, and a Redis client to watch the room."""
    from flashsale.waiting_room.autopipeline import close_shared
    from flashsale.waiting_room.redis_client import open_redis
    from flashsale.waiting_room.tokens import Signer

    redis_client = await open_redis(settings)
    room = WaitingRoom(redis_client, settings, Signer(settings.signing_keys()))
    # one client for the whole crowd: it must never keep cookies, or the visitor cookie of one
    # shopper would make the next one's join the same visitor
    async with httpx.AsyncClient(
        transport=KeepAliveTransport(host, port),
        base_url=f"http://{host}:{port}",
        cookies=_NoCookies(),
        timeout=httpx.Timeout(15.0, connect=5.0),
    ) as http:
        try:
            yield Crowd(plan, settings, http, room, random.Random(seed), Gate(plan.in_flight))
        finally:
            await close_shared()
            await redis_client.aclose()


async def create_sale(crowd: Crowd, admin: dict[str, str], sale_id: str, opens_at: float) -> None:
    """Create the crowd's sale through the admin API; it opens at `opens_at`."""
    crowd.sale_id, crowd.opens_at = sale_id, opens_at
    response = await crowd.http.post(
        "/admin/sales", headers=admin, json=sale_body(crowd.plan, sale_id, opens_at)
    )
    if response.status_code != 201:
        raise SaleFailed(
            f"creating the sale answered {response.status_code}: {response.text[:300]}"
        )


async def release(
    crowd: Crowd, shoppers: Sequence[Shopper], after_admission: AfterAdmission, deadline: float
) -> None:
    """Send the shoppers and wait for them all, or until `deadline` (epoch seconds): those
    still at it then end `unfinished`."""
    tasks = [asyncio.create_task(run_shopper(crowd, s, after_admission)) for s in shoppers]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.time()))
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for s in shoppers:
        if s.outcome == "pending":
            s.outcome = "unfinished"


async def admitted_bits(crowd: Crowd, shoppers: Sequence[Shopper]) -> dict[int, bool]:
    """Whether Redis marked each shopper's place admitted: the server's side of the story."""
    joined = [s for s in shoppers if s.index is not None]
    key = crowd.room.keys(crowd.sale_id).admitted
    async with crowd.room.redis.pipeline(transaction=False) as pipe:
        for s in joined:
            pipe.getbit(key, s.index or 0)
        bits = await pipe.execute()
    return {s.n: bool(bit) for s, bit in zip(joined, bits, strict=True)}


@contextlib.contextmanager
def runner() -> Iterator[asyncio.Runner]:
    """uvloop when available: the crowd's HTTP client is the busiest process of a run."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as asyncio_runner:
        yield asyncio_runner
