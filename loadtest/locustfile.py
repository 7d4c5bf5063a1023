"""A flash sale's crowd, for locust: shoppers through the waiting room to a purchase, an ops
user watching the sale, a scraper tripping the ingress's rate limit, and `FlashSpike`, the
shape of the crowd (a ramp before the opening, a huge burst at it, then a tail).

`loadtest/spike.py` (`make loadtest`) runs it headless against HAProxy and passes what it needs
in the environment:

  SPIKE_SALES      JSON list of {"id", "seated", "weight"}: the sales shoppers go to
  SPIKE_OPENS_AT   epoch seconds of the sales' opening (the burst comes then)
  SPIKE_INTERNAL   base URL of the in-cluster entry (admin API), e.g. http://127.0.0.1:8081
  SPIKE_ADMIN_TOKEN  bearer token of the admin API
  SPIKE_OUT        folder where each locust process writes what its shoppers saw
                   (orders-PID.jsonl: one JSON object a line, see `Record`)
  SPIKE_PRE_SHARE, SPIKE_TAIL_SHARE, SPIKE_BURST_SHARE  the shape (see FlashSpike)

Run by hand: `locust -f loadtest/locustfile.py --headless -u 2000 -r 500 --run-time 90s
-H http://127.0.0.1:8080` with the variables above set.

Every shopper is a new visitor: one locust user is a browser tab that brings shoppers one
after another (a new visitor id each time), so the crowd keeps arriving while the shape holds
the users. A user stopped by the shape mid-journey is a shopper who closed the tab: the room
must skip them when their turn comes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, constant, events, task
from locust.contrib.fasthttp import FastResponse

SALES: list[dict[str, Any]] = json.loads(os.environ.get("SPIKE_SALES") or "[]")
OPENS_AT = float(os.environ.get("SPIKE_OPENS_AT") or time.time())
INTERNAL = os.environ.get("SPIKE_INTERNAL", "").rstrip("/")
ADMIN_TOKEN = os.environ.get("SPIKE_ADMIN_TOKEN", "")
OUT = os.environ.get("SPIKE_OUT", "")

# what an admitted shopper does with their hold
PAY_SHARE, DECLINE_SHARE = 0.80, 0.10  # the remaining ~10% walk away: the hold must expire
ABANDON_SHARE = 0.03  # give up while waiting in line (the admitter must skip them)
TWO_UNITS_SHARE = 0.15  # on a quantity sale, hold two units instead of one
REQUEST_ID_CHARS = set("0123456789abcdef-")


class Record:
    """What this process's shoppers saw, one JSON line per event, for the harness to square
    with PostgreSQL and Redis: confirmed | declined | walked | expired | failed | held |
    admitted | scraper. Written whole under a lock (gevent only switches on I/O, and a user
    stopped by the shape cannot be interrupted inside `write`)."""

    _lock = threading.Lock()
    _file: Any = None

    @classmethod
    def write(cls, **fields: Any) -> None:
        if not OUT:
            return
        line = json.dumps({"t": round(time.time(), 3), **fields}, separators=(",", ":"))
        with cls._lock:
            if cls._file is None:
                cls._file = open(os.path.join(OUT, f"orders-{os.getpid()}.jsonl"), "a")  # noqa: SIM115
            cls._file.write(line + "\n")
            cls._file.flush()


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _close_record(**_: Any) -> None:
    if Record._file is not None:
        Record._file.close()


def _code(response: FastResponse) -> str:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return f"http_{response.status_code}"


def _retry_after(response: FastResponse, default: float = 1.0) -> float:
    try:
        raw = response.headers.get("retry-after") if response.headers else None
        return max(0.1, float(str(raw)) if raw else default)
    except ValueError:
        return default


def _fake_address() -> str:
    """A client address from the benchmarking range (RFC 2544): HAProxy's rate limit and the
    API's join limit see one shopper per address, as they would behind a cloud load balancer
    that passes X-Forwarded-For; a few share one, as behind a NAT."""
    n = random.randrange(1, 60_000)
    return f"198.18.{n // 250}.{n % 250 + 1}"


class Shopper(FastHttpUser):
    """A browser tab: a shopper arrives, joins, polls as told, buys or not, leaves; then the
    next shopper comes on the same tab (a new visitor)."""

    weight = 100
    wait_time = between(0.5, 2.0)  # between one shopper leaving and the next arriving
    network_timeout = 30.0
    connection_timeout = 10.0
    concurrency = 1

    @task
    def journey(self) -> None:
        if not SALES:
            gevent.sleep(1)
            return
        sale = random.choices(SALES, weights=[s.get("weight", 1) for s in SALES])[0]
        self.client.cookiejar.clear()  # a new visitor: no fs_vid cookie from the last one
        self.sale_id = sale["id"]
        self.seated = bool(sale.get("seated"))
        self.address = _fake_address()
        joined = self._join()
        if joined is None:
            return
        status = self._wait_in_line(joined)
        if status is None or status.get("state") != "admitted":
            return
        self._shop(status)

    # -- the steps -------------------------------------------------------------------------

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"X-Forwarded-For": self.address, **extra}

    def _join(self) -> dict[str, Any] | None:
        url = f"/api/sales/{self.sale_id}/join"
        for _ in range(5):
            with self.client.post(
                url, name="join", headers=self._headers(), catch_response=True
            ) as r:
                if r.status_code in (200, 201):
                    body: dict[str, Any] = r.json()
                    rid = r.headers.get("x-request-id") or ""
                    if len(rid) != 36 or not set(rid) <= REQUEST_ID_CHARS:
                        r.failure(f"no HAProxy request id (uuid) on the answer: {rid!r}")
                    self.visitor, self.ticket = body["visitor_id"], body["ticket"]
                    return body
                if r.status_code == 409:  # sold out or closed before this shopper got in
                    r.success()
                    return None
                if r.status_code == 429:
                    r.success()
                    wait = _retry_after(r)
                else:
                    r.failure(f"join answered {r.status_code}: {r.text[:120]}")
                    return None
            gevent.sleep(wait + random.uniform(0, 0.5))
        return None

    def _wait_in_line(self, status: dict[str, Any]) -> dict[str, Any] | None:
        patience = random.uniform(2, 20) if random.random() < ABANDON_SHARE else None
        arrived = time.monotonic()
        url = f"/api/sales/{self.sale_id}/status"
        headers = self._headers(**{"X-Queue-Ticket": self.ticket, "X-Visitor-Id": self.visitor})
        while status["state"] in ("not_open", "waiting") or (
            status["state"] == "sold_out" and status.get("poll_after_seconds")
        ):
            told = float(status.get("poll_after_seconds") or 1.0)
            delay = told * random.uniform(0.9, 1.0)  # up to 10% early, never late
            if patience is not None and time.monotonic() + delay - arrived > patience:
                return None  # walks away from the line: simply stops polling
            gevent.sleep(delay)
            query = "" if status.get("heartbeat") is None else f"?hb={status['heartbeat']}"
            with self.client.get(
                url + query, name="status", headers=headers, catch_response=True
            ) as r:
                if r.status_code == 200:
                    status = r.json()
                elif r.status_code == 429:
                    r.success()
                else:
                    r.failure(f"status answered {r.status_code}: {r.text[:120]}")
                    return None
        if status["state"] == "admitted":
            Record.write(
                event="admitted",
                sale=self.sale_id,
                visitor=self.visitor,
                position=status.get("position"),
            )
        return status

    def _shop(self, status: dict[str, Any]) -> None:
        gevent.sleep(random.uniform(0.2, 1.0))  # looks at the product
        if self.seated:
            quantity = random.randint(1, 4)  # a party sits together
        else:
            quantity = 2 if random.random() < TWO_UNITS_SHARE else 1
        order = self._hold(status["admission_token"], quantity)
        if order is None:
            self._leave()
            return
        draw = random.random()
        if draw >= PAY_SHARE + DECLINE_SHARE:
            Record.write(
                event="walked", sale=self.sale_id, order=order["id"], quantity=order["quantity"]
            )
            return  # closes the tab with a hold in the basket: it must expire
        gevent.sleep(random.uniform(0.2, 1.0))  # types the card number
        self._pay(order, "tok_approve" if draw < PAY_SHARE else "tok_decline")
        self._leave()

    def _hold(self, admission: str, quantity: int) -> dict[str, Any] | None:
        url = f"/api/sales/{self.sale_id}/holds"
        headers = self._headers(
            **{
                "Authorization": f"Bearer {admission}",
                "X-Visitor-Id": self.visitor,
                "Idempotency-Key": uuid.uuid4().hex,
            }
        )
        for _ in range(5):
            with self.client.post(
                url, name="hold", headers=headers, json={"quantity": quantity}, catch_response=True
            ) as r:
                if r.status_code in (200, 201):
                    order = r.json()
                    Record.write(
                        event="held",
                        sale=self.sale_id,
                        order=order["id"],
                        quantity=order["quantity"],
                        seats=[s.get("id") for s in order.get("seats") or []],
                    )
                    return dict(order)
                code = _code(r)
                if r.status_code in (403, 409) and code in (
                    "sold_out",
                    "insufficient_stock",
                    "not_admitted",
                    "limit_reached",
                    "seats_taken",
                    "closed",
                ):
                    r.success()  # the sale's answer, not an error
                    return None
                if r.status_code in (429, 503):  # sent again with the same key: same hold
                    r.success()
                    wait = _retry_after(r)
                else:
                    r.failure(f"hold answered {r.status_code}: {r.text[:120]}")
                    return None
            gevent.sleep(wait)
        return None

    def _pay(self, order: dict[str, Any], card: str) -> None:
        url = f"/api/sales/{self.sale_id}/orders/{order['id']}/pay"
        headers = self._headers(**{"X-Visitor-Id": self.visitor})
        seats = [s.get("id") for s in order.get("seats") or []]
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            with self.client.post(
                url, name="pay", headers=headers, json={"payment_token": card}, catch_response=True
            ) as r:
                code = _code(r)
                if r.status_code == 200 and r.json().get("status") == "confirmed":
                    if card != "tok_approve":
                        r.failure("a declined card was confirmed")
                    Record.write(
                        event="confirmed",
                        sale=self.sale_id,
                        order=order["id"],
                        quantity=order["quantity"],
                        seats=seats,
                    )
                    return
                if r.status_code == 402:
                    if card == "tok_approve":
                        r.failure("an approved card was declined")
                    else:
                        r.success()
                    Record.write(event="declined", sale=self.sale_id, order=order["id"])
                    return
                if code in ("payment_in_progress", "payment_unavailable") or r.status_code == 429:
                    r.success()
                    wait = _retry_after(r)
                elif r.status_code == 410:  # the hold expired first: a slow shopper
                    r.success()
                    Record.write(event="expired", sale=self.sale_id, order=order["id"])
                    return
                elif code == "order_failed":  # the database refused it, refunded
                    r.success()
                    Record.write(event="failed", sale=self.sale_id, order=order["id"])
                    return
                else:
                    r.failure(f"pay answered {r.status_code}: {r.text[:120]}")
                    return
            gevent.sleep(wait)

    def _leave(self) -> None:
        with self.client.post(
            f"/api/sales/{self.sale_id}/leave",
            name="leave",
            headers=self._headers(**{"X-Queue-Ticket": self.ticket, "X-Visitor-Id": self.visitor}),
            catch_response=True,
        ) as r:
            if r.status_code in (200, 429):
                r.success()
            else:
                r.failure(f"leave answered {r.status_code}: {r.text[:120]}")


class Ops(FastHttpUser):
    """The operator on call: reads the sale (room counters) and checks reconcile through the
    admin API, on the in-cluster entry (the public ingress serves only /api)."""

    fixed_count = 1
    wait_time = between(1.0, 2.0)
    network_timeout = 30.0

    @task
    def watch(self) -> None:
        if not SALES or not INTERNAL:
            gevent.sleep(1)
            return
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for sale in SALES:
            with self.client.get(
                f"{INTERNAL}/admin/sales/{sale['id']}",
                name="admin sale",
                headers=headers,
                catch_response=True,
            ) as r:
                if r.status_code != 200 or "room" not in r.json():
                    r.failure(f"admin sale answered {r.status_code}: {r.text[:120]}")
            with self.client.get(
                f"{INTERNAL}/admin/sales/{sale['id']}/reconcile",
                name="admin reconcile",
                headers=headers,
                catch_response=True,
            ) as r:
                if r.status_code != 200 or "ok" not in r.json():
                    r.failure(f"reconcile answered {r.status_code}: {r.text[:120]}")


class Scraper(FastHttpUser):
    """A bot hammering the sale page from one address until the ingress answers 429, then
    idling: proves the rate limit answers before the API is reached."""

    fixed_count = 1
    wait_time = constant(0)
    network_timeout = 30.0
    address = "198.19.255.254"

    def on_start(self) -> None:
        self.limited = 0
        self.sent = 0

    @task
    def hammer(self) -> None:
        if not SALES or self.limited >= 20 or self.sent >= 5000:
            gevent.sleep(1)
            return
        self.sent += 1
        with self.client.get(
            f"/api/sales/{SALES[0]['id']}",
            name="scraper",
            headers={"X-Forwarded-For": self.address},
            catch_response=True,
        ) as r:
            if r.status_code == 429:
                r.success()
                self.limited += 1
                if self.limited == 20:
                    Record.write(event="scraper", sent=self.sent, limited=self.limited)
            elif r.status_code != 200:
                r.failure(f"sale page answered {r.status_code}")


class FlashSpike(LoadTestShape):
    """The crowd over time, from `-u` (the peak), `-r` (how fast the burst arrives) and
    `--run-time` (the whole test, from locust's start):

    - until the opening (SPIKE_OPENS_AT) a ramp to SPIKE_PRE_SHARE of the peak (the pre-queue);
    - at the opening a burst to the peak at `-r` users a second;
    - after SPIKE_BURST_SHARE of the time after the opening, down to SPIKE_TAIL_SHARE of the
      peak (the stopped users are shoppers who closed the tab), kept until the end.
    """

    use_common_options = True
    pre_share = float(os.environ.get("SPIKE_PRE_SHARE") or 0.25)
    tail_share = float(os.environ.get("SPIKE_TAIL_SHARE") or 0.4)
    burst_share = float(os.environ.get("SPIKE_BURST_SHARE") or 0.35)

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        peak = int(getattr(options, "num_users", None) or 100)
        rate = float(getattr(options, "spawn_rate", None) or peak)
        run_time = float(getattr(options, "run_time", None) or 60)
        t: float = self.get_run_time()  # type: ignore[no-untyped-call]
        if t >= run_time:
            return None
        extras = 2  # Ops and Scraper (fixed_count) come on top of the shoppers
        opens = max(0.0, OPENS_AT - (time.time() - t))  # the opening, in the shape's time
        if t < opens - 0.5:
            pre = max(1, round(peak * self.pre_share * t / (opens - 0.5)))
            return pre + extras, max(1.0, 2 * peak * self.pre_share / opens)
        if t < opens + (run_time - opens) * self.burst_share:
            return peak + extras, rate
        return max(1, round(peak * self.tail_share)) + extras, max(1.0, rate / 10)
