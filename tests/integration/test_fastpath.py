"""The fast path (api/fastpath.py) answers status polls, joins and holds exactly as the full
Starlette path does, and hands everything it cannot read plainly to the full path intact.

Each test asks the same thing of both: the app as served, and the same app with the access log
on, which sends every request down the full path. Which path answered shows in the made-up
`X-Request-ID`: the fast path's ids start with a per-process prefix."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from flashsale.api import fastpath
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Claims, Signer
from tests.support import Admit, app_for

VOLATILE = {"x-request-id", "content-length"}
JOIN_ROUTE = "/api/sales/{sale_id}/join"


@pytest.fixture
async def full(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A client to the same app over the same Redis, PostgreSQL and room, but with the access
    log on: the fast path then steps aside for every request."""
    logged = replace(services, settings=replace(services.settings, access_log=True))
    transport = httpx.ASGITransport(app=app_for(logged), client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(autouse=True)
def no_cookie_jar(client: httpx.AsyncClient, full: httpx.AsyncClient) -> None:
    """Each request carries only the cookies the test gives it."""
    for http in (client, full):
        http.cookies.clear()
        http.event_hooks["response"].append(lambda response, http=http: _forget(http))


async def _forget(http: httpx.AsyncClient) -> None:
    http.cookies.clear()  # a response hook runs after the client has stored its cookies


def by_fast_path(response: httpx.Response) -> bool:
    return response.headers["x-request-id"].startswith(fastpath._PREFIX)


def headers_of(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VOLATILE}


def assert_same(fast: httpx.Response, slow: httpx.Response) -> None:
    assert by_fast_path(fast), "the fast path did not answer"
    assert not by_fast_path(slow), "the full path did not answer"
    assert (fast.status_code, fast.json()) == (slow.status_code, slow.json())
    assert headers_of(fast) == headers_of(slow)


async def open_sale(make_sale: Any, clock: Any, **overrides: Any) -> Sale:
    sale: Sale = await make_sale(**overrides)
    clock.advance(sale.opens_at.timestamp() - clock() + 1)
    return sale


def visitor() -> str:
    return f"v-{secrets.token_hex(8)}"


def join_count() -> float:
    return (
        REGISTRY.get_sample_value(
            "flashsale_http_request_duration_seconds_count",
            {"route": JOIN_ROUTE, "method": "POST", "status": "200"},
        )
        or 0.0
    )


# -- status polls and joins ------------------------------------------------------------------


async def test_poll_is_answered_as_the_full_path_answers_it(
    client: httpx.AsyncClient, full: httpx.AsyncClient, make_sale: Any, clock: Any
) -> None:
    sale = await open_sale(make_sale, clock)
    joined = (await client.post(f"/api/sales/{sale.id}/join")).json()
    headers = {"X-Queue-Ticket": joined["ticket"]}
    url = f"/api/sales/{sale.id}/status?hb={joined['heartbeat']}"
    fast, slow = await client.get(url, headers=headers), await full.get(url, headers=headers)
    assert_same(fast, slow)
    assert fast.json()["state"] == "waiting"
    # the caller's own request id is kept on both paths
    fast = await client.get(url, headers={**headers, "X-Request-ID": "lb-1234"})
    assert fast.headers["x-request-id"] == "lb-1234"


async def test_join_is_answered_as_the_full_path_answers_it(
    client: httpx.AsyncClient, full: httpx.AsyncClient, make_sale: Any, clock: Any
) -> None:
    sale = await open_sale(make_sale, clock)
    url = f"/api/sales/{sale.id}/join"
    # a first visit: the visitor id is issued, with its cookie
    first_fast, first_slow = await client.post(url), await full.post(url)
    assert by_fast_path(first_fast) and not by_fast_path(first_slow)
    assert first_fast.status_code == first_slow.status_code == 201
    assert headers_of(first_fast).keys() == headers_of(first_slow).keys()
    assert first_fast.json().keys() == first_slow.json().keys()
    assert first_fast.headers["set-cookie"] == first_slow.headers["set-cookie"].replace(
        first_slow.json()["visitor_id"], first_fast.json()["visitor_id"]
    )
    # coming back, by header (the cookie is set again) and by cookie (it is not)
    who = first_fast.json()["visitor_id"]
    before = join_count()
    by_header = {"X-Visitor-Id": who}
    fast = await client.post(url, headers=by_header)
    assert join_count() == before + 1  # the fast path's answers are in the request metrics
    assert_same(fast, await full.post(url, headers=by_header))
    by_cookie = {"Cookie": f"fs_vid={who}"}
    fast, slow = await client.post(url, headers=by_cookie), await full.post(url, headers=by_cookie)
    assert_same(fast, slow)
    assert fast.json()["existing"] is True and "set-cookie" not in fast.headers
    # a cookie for someone else: the header's visitor wins and gets their cookie
    mixed = {"X-Visitor-Id": who, "Cookie": f"fs_vid={visitor()}"}
    fast, slow = await client.post(url, headers=mixed), await full.post(url, headers=mixed)
    assert_same(fast, slow)
    assert fast.cookies["fs_vid"] == who


async def test_join_refusals_are_rendered_as_the_full_path_renders_them(
    client: httpx.AsyncClient, full: httpx.AsyncClient, make_sale: Any, clock: Any, sales: Any
) -> None:
    sale = await open_sale(make_sale, clock)
    await sales.close(sale.id)
    url = f"/api/sales/{sale.id}/join"
    fast, slow = await client.post(url), await full.post(url)
    assert_same(fast, slow)
    assert fast.status_code == 409 and fast.json()["error"]["code"] == "closed"


async def test_what_the_fast_path_cannot_read_plainly_reaches_the_full_path(
    client: httpx.AsyncClient, make_sale: Any, clock: Any
) -> None:
    sale = await open_sale(make_sale, clock)
    url = f"/api/sales/{sale.id}/join"
    with_body = await client.post(url, json={"from": "newsletter"})  # allowed, validated there
    assert with_body.status_code == 201 and not by_fast_path(with_body)
    not_an_object = await client.post(url, json=[1])
    assert not_an_object.status_code == 422 and not by_fast_path(not_an_object)
    bad_visitor = await client.post(url, headers={"X-Visitor-Id": "no spaces!"})
    assert bad_visitor.status_code == 400 and not by_fast_path(bad_visitor)
    no_ticket = await client.get(f"/api/sales/{sale.id}/status")
    assert no_ticket.status_code == 401 and not by_fast_path(no_ticket)
    odd_query = await client.get(
        f"/api/sales/{sale.id}/status?hb=x", headers={"X-Queue-Ticket": with_body.json()["ticket"]}
    )
    assert odd_query.status_code == 400 and not by_fast_path(odd_query)


# -- holds -----------------------------------------------------------------------------------


def bearer(signer: Signer, claims: Claims, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.sign(claims)}", **extra}


async def test_hold_is_answered_as_the_full_path_answers_it(
    client: httpx.AsyncClient,
    full: httpx.AsyncClient,
    make_sale: Any,
    admit: Admit,
    signer: Signer,
) -> None:
    sale = await make_sale(stock=10, per_shopper_limit=3)
    first, second = await admit(sale, 2)
    url = f"/api/sales/{sale.id}/holds"
    fast = await client.post(
        url, json={"quantity": 2}, headers=bearer(signer, first, **{"Idempotency-Key": "a"})
    )
    slow = await full.post(
        url, json={"quantity": 2}, headers=bearer(signer, second, **{"Idempotency-Key": "a"})
    )
    assert by_fast_path(fast) and not by_fast_path(slow)
    assert fast.status_code == slow.status_code == 201
    assert headers_of(fast).keys() == headers_of(slow).keys()
    assert fast.headers["location"] == f"{url.removesuffix('holds')}orders/{fast.json()['id']}"
    strip = {"id", "hold_expires_at"}
    assert {k: v for k, v in fast.json().items() if k not in strip} == {
        k: v for k, v in slow.json().items() if k not in strip
    }
    # the same request again (same Idempotency-Key): both paths replay the first hold
    again = bearer(signer, first, **{"Idempotency-Key": "a"})
    assert_same(
        await client.post(url, json={"quantity": 2}, headers=again),
        await full.post(url, json={"quantity": 2}, headers=again),
    )
    # refusals the hold itself decides: over the per-shopper limit, a bad quantity
    more = bearer(signer, first, **{"Idempotency-Key": "b"})
    fast, slow = (
        await client.post(url, json={"quantity": 2}, headers=more),
        await full.post(url, json={"quantity": 2}, headers=more),
    )
    assert_same(fast, slow)
    assert fast.status_code == 409 and fast.json()["error"]["code"] == "limit_reached"
    zero = bearer(signer, first)
    assert_same(
        await client.post(url, json={"quantity": 0}, headers=zero),
        await full.post(url, json={"quantity": 0}, headers=zero),
    )


async def test_a_hold_without_admission_is_refused_alike(
    client: httpx.AsyncClient,
    full: httpx.AsyncClient,
    make_sale: Any,
    admit: Admit,
    signer: Signer,
    clock: Any,
) -> None:
    sale = await make_sale(stock=10)
    (shopper,) = await admit(sale, 1)
    url = f"/api/sales/{sale.id}/holds"
    # a well-signed token for a place that was never admitted: the hold script refuses it
    stranger = replace(shopper, visitor=visitor(), index=shopper.index + 1000)
    fast, slow = (
        await client.post(url, headers=bearer(signer, stranger)),
        await full.post(url, headers=bearer(signer, stranger)),
    )
    assert_same(fast, slow)
    assert fast.status_code == 403 and fast.json()["error"]["code"] == "not_admitted"
    # a token that fails to verify, or none: the full path refuses it
    forged = {"Authorization": "Bearer " + signer.sign(shopper)[:-2] + "AA"}
    refused = await client.post(url, headers=forged)
    assert refused.status_code == 401 and not by_fast_path(refused)
    missing = await client.post(url)
    assert missing.status_code == 401 and not by_fast_path(missing)
    assert (await client.post(url, headers=bearer(signer, shopper))).status_code == 201


async def test_a_hold_body_read_by_the_fast_path_reaches_the_full_path_intact(
    client: httpx.AsyncClient, make_sale: Any, admit: Admit, signer: Signer
) -> None:
    seats = {"sections": [{"name": "A", "rows": [{"name": "1", "seats": 4}]}]}
    sale = await make_sale(seat_map=seats, per_shopper_limit=2)
    (shopper,) = await admit(sale, 1)
    url = f"/api/sales/{sale.id}/holds"
    headers = {**bearer(signer, shopper), "Content-Type": "application/json"}
    unknown = await client.post(url, json={"quantity": 1, "colour": "red"}, headers=headers)
    assert unknown.status_code == 422 and not by_fast_path(unknown)
    assert unknown.json()["error"]["field"] == "colour"
    # the body as sent, not as re-encoded: orjson reads this seat id as a float, and a float
    # is refused as "not a seat id" where the whole number is a seat that does not exist
    huge = await client.post(
        url, content=b'{"seats": [123456789012345678901234567890]}', headers=headers
    )
    assert huge.status_code in (409, 422) and not by_fast_path(huge)
    assert "each seat is an id" not in huge.json()["error"]["message"], huge.json()
    broken = await client.post(url, content=b'{"quantity": ', headers=headers)
    assert broken.status_code == 400 and not by_fast_path(broken)
    text = await client.post(
        url, content=b"quantity=1", headers={**headers, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415 and not by_fast_path(text)
    held = await client.post(url, json={"quantity": 2}, headers=headers)
    assert held.status_code == 201 and by_fast_path(held)
    assert len(held.json()["seats"]) == 2
