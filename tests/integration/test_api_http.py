"""The HTTP API end to end (real Redis, real PostgreSQL): admin, shopper, tokens, rate limits."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from starlette.routing import Route

from flashsale.api.app import ROUTES, create_app
from flashsale.config import Settings
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import ADMISSION, TICKET, Claims, Signer
from tests.support import ADMIN_TOKEN, Clock, sale_body

MakeSale = Callable[..., Any]


@asynccontextmanager
async def app_client(
    settings: Settings, services: Services, *, address: str = "198.51.100.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client to a second app built from other settings (same Redis and PostgreSQL)."""
    app = create_app(settings)
    app.state.services = Services.build(settings, services.redis, services.raw_redis, services.pool)
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def visitor() -> str:
    return f"v-{secrets.token_hex(8)}"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) >= {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


async def join(client: httpx.AsyncClient, sale_id: str, who: str) -> dict[str, Any]:
    response = await client.post(f"/api/sales/{sale_id}/join", headers={"X-Visitor-Id": who})
    assert response.status_code in (200, 201), response.text
    return response.json()


# -- admin -----------------------------------------------------------------------------------


async def test_admin_create_get_list(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = sale_body(timezone="Asia/Seoul", per_shopper_limit=3)
    response = await client.post("/admin/sales", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/admin/sales/{body['id']}"
    created = response.json()
    assert created["id"] == body["id"] and created["stock"] == 100
    assert created["timezone"] == "Asia/Seoul" and created["phase"] == "scheduled"
    assert created["admission"]["batch_size"] == 10
    assert created["room"]["waiting"] == 0 and created["room"]["opened"] is False

    again = await client.post("/admin/sales", json=body, headers=admin_headers)
    assert_error(again, 409, "conflict")

    await join(client, body["id"], visitor())
    got = await client.get(response.headers["location"], headers=admin_headers)
    assert got.status_code == 200
    detail = got.json()
    assert detail["name"] == body["name"]
    assert detail["room"] == {
        "waiting": 1,
        "active": 0,
        "admitted_total": 0,
        "skipped_total": 0,
        "frontier": 0,
        "joined": 1,
        "opened": False,
        "sold_out": False,
        "pow_difficulty": 0,  # the proof of work a new place costs now (none: anonymous)
    }

    listed = await client.get("/admin/sales", headers=admin_headers)
    assert listed.status_code == 200
    assert body["id"] in [s["id"] for s in listed.json()["sales"]]


async def test_admin_list_include_closed(
    client: httpx.AsyncClient, make_sale: MakeSale, admin_headers: dict[str, str]
) -> None:
    open_sale, closed_sale = await make_sale(), await make_sale()
    closed = await client.post(f"/admin/sales/{closed_sale.id}/close", headers=admin_headers)
    assert closed.status_code == 200
    for query, expect_closed in (
        ("", True),
        ("?include_closed=true", True),
        ("?include_closed=false", False),
        ("?include_closed=0", False),
    ):
        response = await client.get(f"/admin/sales{query}", headers=admin_headers)
        ids = [s["id"] for s in response.json()["sales"]]
        assert open_sale.id in ids
        assert (closed_sale.id in ids) is expect_closed, query


async def test_admin_patch_changes_admission_live(
    client: httpx.AsyncClient, make_sale: MakeSale, room: WaitingRoom, admin_headers: dict[str, str]
) -> None:
    sale = await make_sale()
    before = await room.view(sale.id, fresh=True)
    assert (before.batch_size, before.interval_ms, before.max_active) == (10, 50, 50)
    await join(client, sale.id, visitor())

    admission = {
        "batch_size": 7,
        "batch_interval_ms": 250,
        "max_active": 70,
        "admission_ttl_seconds": 120,
        "abandon_after_seconds": 30,
    }
    response = await client.patch(
        f"/admin/sales/{sale.id}",
        headers=admin_headers,
        json={"admission": admission, "name": "Renamed"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["admission"] == admission and body["name"] == "Renamed"
    assert body["stock"] == sale.stock  # untouched

    after = await room.view(sale.id, fresh=True)
    assert (after.batch_size, after.interval_ms, after.max_active) == (7, 250, 70)
    assert (after.admission_ttl_ms, after.abandon_ms) == (120_000, 30_000)
    assert after.pre == 1  # the room's counters survive the change
    assert after.shuffle_key == before.shuffle_key

    got = await client.get(f"/admin/sales/{sale.id}", headers=admin_headers)
    assert got.json()["admission"] == admission

    bad = await client.patch(
        f"/admin/sales/{sale.id}", headers=admin_headers, json={"admission": {"batch_size": 71}}
    )
    assert_error(bad, 422)
    assert bad.json()["error"]["field"] == "admission.max_active"
    assert (await room.view(sale.id, fresh=True)).batch_size == 7


async def test_admin_put_creates_then_updates(
    client: httpx.AsyncClient, room: WaitingRoom, admin_headers: dict[str, str]
) -> None:
    body = sale_body()
    sale_id = body.pop("id")
    first = await client.put(f"/admin/sales/{sale_id}", json=body, headers=admin_headers)
    assert first.status_code == 201, first.text
    assert first.json()["id"] == sale_id
    body["name"] = "Second name"
    body["admission"] = {**body["admission"], "batch_size": 3}
    second = await client.put(f"/admin/sales/{sale_id}", json=body, headers=admin_headers)
    assert second.status_code == 200, second.text
    assert second.json()["name"] == "Second name"
    assert (await room.view(sale_id, fresh=True)).batch_size == 3
    same = await client.put(f"/admin/sales/{sale_id}", json=body, headers=admin_headers)
    assert same.status_code == 200  # idempotent
    mismatch = await client.put(
        f"/admin/sales/{sale_id}", headers=admin_headers, json={**body, "id": "another-id"}
    )
    assert_error(mismatch, 422)
    assert mismatch.json()["error"]["field"] == "id"


async def test_admin_close(
    client: httpx.AsyncClient, make_sale: MakeSale, admin_headers: dict[str, str]
) -> None:
    sale = await make_sale()
    joined = await join(client, sale.id, visitor())
    response = await client.post(f"/admin/sales/{sale.id}/close", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["phase"] == "closed"
    assert response.json()["closed_at"]

    late = await client.post(f"/api/sales/{sale.id}/join", headers={"X-Visitor-Id": visitor()})
    body = assert_error(late, 409, "closed")
    assert body["state"] == "closed"

    status = await client.get(
        f"/api/sales/{sale.id}/status", headers={"X-Queue-Ticket": joined["ticket"]}
    )
    assert status.status_code == 200
    assert status.json()["state"] == "closed"
    assert status.json()["poll_after_seconds"] is None

    info = await client.get(f"/api/sales/{sale.id}")
    assert info.json()["phase"] == "closed"
    again = await client.post(f"/admin/sales/{sale.id}/close", headers=admin_headers)
    assert again.status_code == 200  # closing twice is harmless
    assert again.json()["closed_at"] == response.json()["closed_at"]
    patch = await client.patch(f"/admin/sales/{sale.id}", json={"name": "x"}, headers=admin_headers)
    assert_error(patch, 409, "conflict")


# every admin operation of the app, so a new admin route is covered without editing this list
ADMIN_CALLS = sorted(
    (method, route.path.replace("{sale_id}", "{id}"))
    for route in ROUTES
    if isinstance(route, Route) and route.path.startswith("/admin")
    for method in (route.methods or ())
    if method != "HEAD"
)


async def test_admin_auth(client: httpx.AsyncClient, make_sale: MakeSale) -> None:
    assert len(ADMIN_CALLS) >= 6
    sale = await make_sale()
    for method, path in ADMIN_CALLS:
        url = path.format(id=sale.id)
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer "},
            {"Authorization": ADMIN_TOKEN},
            {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        ):
            response = await client.request(method, url, headers=headers, json={"name": "x"})
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer", (method, url, headers)
    ok = await client.get("/admin/sales", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200  # the scheme is case-insensitive


async def test_admin_disabled(settings: Settings, services: Services, make_sale: MakeSale) -> None:
    sale = await make_sale()
    async with app_client(replace(settings, admin_token=""), services) as http:
        for method, path in ADMIN_CALLS:
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
                response = await http.request(
                    method, path.format(id=sale.id), headers=headers, json={"name": "x"}
                )
                assert_error(response, 403, "admin_disabled")
        # shoppers are unaffected
        assert (await http.get(f"/api/sales/{sale.id}")).status_code == 200


# -- shopper ---------------------------------------------------------------------------------


async def test_sale_info(client: httpx.AsyncClient, make_sale: MakeSale) -> None:
    sale = await make_sale()
    response = await client.get(f"/api/sales/{sale.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == sale.id and body["phase"] == "scheduled"
    assert body["waiting"] == 0 and body["sold_out"] is False
    assert "admission" not in body and "seat_map" not in body


async def test_join_issues_cookie_and_rejoin_keeps_place(
    client: httpx.AsyncClient, make_sale: MakeSale, signer: Signer
) -> None:
    sale = await make_sale()
    url = f"/api/sales/{sale.id}/join"
    first = await client.post(url)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["existing"] is False and body["state"] == "not_open"
    vid = body["visitor_id"]
    assert first.cookies["fs_vid"] == vid
    set_cookie = first.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert first.headers["cache-control"] == "no-store"
    index = signer.verify(body["ticket"], kind=TICKET, sale=sale.id, now=time.time()).index

    again = await client.post(url)  # the client sends the cookie back
    assert again.status_code == 200, again.text
    assert again.json()["existing"] is True and again.json()["visitor_id"] == vid
    assert "set-cookie" not in again.headers  # the cookie already matches
    assert (
        signer.verify(again.json()["ticket"], kind=TICKET, sale=sale.id, now=time.time()).index
        == index
    )

    client.cookies.clear()
    by_header = await client.post(url, headers={"X-Visitor-Id": vid})
    assert by_header.status_code == 200
    assert by_header.json()["existing"] is True
    assert (
        signer.verify(by_header.json()["ticket"], kind=TICKET, sale=sale.id, now=time.time()).index
        == index
    )
    assert by_header.cookies["fs_vid"] == vid  # the cookie is (re)set for the header's visitor

    client.cookies.clear()
    other = await client.post(url)
    assert other.status_code == 201
    assert other.json()["visitor_id"] != vid
    assert (
        signer.verify(other.json()["ticket"], kind=TICKET, sale=sale.id, now=time.time()).index
        != index
    )


async def test_join_with_empty_json_object_body(
    client: httpx.AsyncClient, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    response = await client.post(f"/api/sales/{sale.id}/join", json={})
    assert response.status_code == 201


async def test_status_ticket_in_header_and_query(
    client: httpx.AsyncClient, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    who = visitor()
    joined = await join(client, sale.id, who)
    url = f"/api/sales/{sale.id}/status"
    by_header = await client.get(url, headers={"X-Queue-Ticket": joined["ticket"]})
    assert by_header.status_code == 200, by_header.text
    body = by_header.json()
    assert body["state"] == "not_open" and body["sale"] == sale.id
    assert body["waiting"] == 1 and body["poll_after_seconds"] > 0
    assert by_header.headers["cache-control"] == "no-store"
    by_query = await client.get(url, params={"ticket": joined["ticket"], "hb": body["heartbeat"]})
    assert by_query.status_code == 200
    assert by_query.json()["state"] == "not_open"
    with_visitor = await client.get(
        url, headers={"X-Queue-Ticket": joined["ticket"], "X-Visitor-Id": who}
    )
    assert with_visitor.status_code == 200

    missing = await client.get(url)
    assert_error(missing, 401, "missing_ticket")


async def test_status_through_admission(
    client: httpx.AsyncClient, make_sale: MakeSale, room: WaitingRoom, clock: Clock, signer: Signer
) -> None:
    sale = await make_sale()
    joined = await join(client, sale.id, visitor())
    clock.advance(3601)  # past the opening
    url = f"/api/sales/{sale.id}/status"
    # the room learns of the opening from the admitter (or a join): until then, not_open
    early = await client.get(url, headers={"X-Queue-Ticket": joined["ticket"]})
    assert early.json()["state"] == "not_open"
    assert (await room.admit_once(sale.id)).outcome == "opened"
    waiting = await client.get(url, headers={"X-Queue-Ticket": joined["ticket"]})
    assert waiting.json()["state"] == "waiting"
    assert waiting.json()["position"] == 1 and waiting.json()["ahead"] == 0
    assert (await room.admit_once(sale.id)).admitted == 1
    admitted = await client.get(url, headers={"X-Queue-Ticket": joined["ticket"]})
    body = admitted.json()
    assert body["state"] == "admitted", body
    assert body["admitted_until"]
    claims = signer.verify(body["admission_token"], kind=ADMISSION, sale=sale.id, now=clock())
    assert claims.visitor == joined["visitor_id"]

    left = await client.post(
        f"/api/sales/{sale.id}/leave", headers={"X-Queue-Ticket": joined["ticket"]}
    )
    assert left.status_code == 200 and left.json()["state"] == "left"
    after = await client.get(url, headers={"X-Queue-Ticket": joined["ticket"]})
    assert after.json()["state"] == "expired"


async def test_status_with_another_visitors_id(
    client: httpx.AsyncClient, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    joined = await join(client, sale.id, visitor())
    for path in ("status", "leave"):
        method = "GET" if path == "status" else "POST"
        response = await client.request(
            method,
            f"/api/sales/{sale.id}/{path}",
            headers={"X-Queue-Ticket": joined["ticket"], "X-Visitor-Id": visitor()},
        )
        assert_error(response, 401, "invalid_token")


async def test_tampered_ticket(client: httpx.AsyncClient, make_sale: MakeSale) -> None:
    sale = await make_sale()
    ticket = (await join(client, sale.id, visitor()))["ticket"]
    body, sig = ticket.split(".")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    for bad in (f"{body}.{flipped}", f"x{body}.{sig}", "garbage", ticket + ".x", "."):
        for path, method in (("status", "GET"), ("leave", "POST")):
            response = await client.request(
                method, f"/api/sales/{sale.id}/{path}", headers={"X-Queue-Ticket": bad}
            )
            assert_error(response, 401, "invalid_token")


async def test_expired_ticket(
    client: httpx.AsyncClient, make_sale: MakeSale, signer: Signer
) -> None:
    sale = await make_sale()
    who = visitor()
    await join(client, sale.id, who)
    expired = signer.sign(Claims(TICKET, sale.id, who, 0, exp=time.time() - 5))
    for path, method in (("status", "GET"), ("leave", "POST")):
        response = await client.request(
            method, f"/api/sales/{sale.id}/{path}", headers={"X-Queue-Ticket": expired}
        )
        assert_error(response, 410, "token_expired")


async def test_ticket_of_another_sale(client: httpx.AsyncClient, make_sale: MakeSale) -> None:
    first, second = await make_sale(), await make_sale()
    ticket = (await join(client, first.id, visitor()))["ticket"]
    response = await client.get(
        f"/api/sales/{second.id}/status", headers={"X-Queue-Ticket": ticket}
    )
    body = assert_error(response, 401, "invalid_token")
    assert "another sale" in body["error"]["message"]


async def test_admission_token_is_not_a_ticket(
    client: httpx.AsyncClient, make_sale: MakeSale, signer: Signer
) -> None:
    sale = await make_sale()
    who = visitor()
    await join(client, sale.id, who)
    token = signer.sign(Claims(ADMISSION, sale.id, who, 0, exp=time.time() + 60))
    response = await client.get(f"/api/sales/{sale.id}/status", headers={"X-Queue-Ticket": token})
    assert_error(response, 401, "invalid_token")


async def test_rotated_key(
    client: httpx.AsyncClient, make_sale: MakeSale, settings: Settings, services: Services
) -> None:
    sale = await make_sale()
    joined = await join(client, sale.id, visitor())  # signed with the current key
    new_key = secrets.token_urlsafe(32)
    rotated = replace(settings, token_key=new_key, token_key_previous=settings.token_key)
    headers = {"X-Queue-Ticket": joined["ticket"]}
    async with app_client(rotated, services) as http:
        response = await http.get(f"/api/sales/{sale.id}/status", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "not_open"
        # tickets issued after the rotation are signed with the new key
        fresh = await http.post(
            f"/api/sales/{sale.id}/join", headers={"X-Visitor-Id": joined["visitor_id"]}
        )
        assert fresh.status_code == 200
        new_ticket = fresh.json()["ticket"]
        assert Signer((new_key.encode(),)).verify(
            new_ticket, kind=TICKET, sale=sale.id, now=time.time()
        )
    forgotten = replace(settings, token_key=new_key, token_key_previous="")
    async with app_client(forgotten, services) as http:
        response = await http.get(f"/api/sales/{sale.id}/status", headers=headers)
        assert_error(response, 401, "invalid_token")
        ok = await http.get(f"/api/sales/{sale.id}/status", headers={"X-Queue-Ticket": new_ticket})
        assert ok.status_code == 200


# -- rate limits -----------------------------------------------------------------------------


def retry_after(response: httpx.Response, window: int) -> int:
    assert_error(response, 429, "rate_limited")
    value = response.headers["retry-after"]
    assert value.isdigit(), value
    assert 1 <= int(value) <= window
    return int(value)


async def test_join_limit_per_visitor(
    settings: Settings, services: Services, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    limited = replace(settings, join_limit_per_visitor=3)
    async with app_client(limited, services) as http:
        who = visitor()
        url = f"/api/sales/{sale.id}/join"
        codes = [
            (await http.post(url, headers={"X-Visitor-Id": who})).status_code for _ in range(3)
        ]
        assert codes == [201, 200, 200]
        for _ in range(2):
            retry_after(
                await http.post(url, headers={"X-Visitor-Id": who}), limited.rate_window_seconds
            )
        # another visitor from the same address is not held back
        assert (await http.post(url, headers={"X-Visitor-Id": visitor()})).status_code == 201


async def test_join_limit_per_address(
    settings: Settings, services: Services, make_sale: MakeSale
) -> None:
    sale = await make_sale()
    limited = replace(settings, join_limit_per_address=3)
    url = f"/api/sales/{sale.id}/join"
    async with app_client(limited, services, address="198.51.100.20") as http:
        for _ in range(3):
            assert (await http.post(url, headers={"X-Visitor-Id": visitor()})).status_code == 201
        retry_after(
            await http.post(url, headers={"X-Visitor-Id": visitor()}), limited.rate_window_seconds
        )
    async with app_client(limited, services, address="198.51.100.21") as http:
        assert (await http.post(url, headers={"X-Visitor-Id": visitor()})).status_code == 201


async def test_a_hold_retried_after_its_admission_ended_gets_that_hold_back(
    client: httpx.AsyncClient, make_sale: MakeSale, admit: Any, signer: Signer
) -> None:
    sale = await make_sale(stock=5)
    (shopper,) = await admit(sale, 1)
    url = f"/api/sales/{sale.id}/holds"
    first = await client.post(
        url,
        headers={"Authorization": f"Bearer {signer.sign(shopper)}", "Idempotency-Key": "retry-1"},
    )
    assert first.status_code == 201, first.text
    # the answer was lost; by the time the shopper retries, the admission has ended
    ended = signer.sign(replace(shopper, exp=time.time() - 5))
    retry = await client.post(
        url, headers={"Authorization": f"Bearer {ended}", "Idempotency-Key": "retry-1"}
    )
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    # without that key, or with another, an ended admission buys nothing more
    for headers in ({}, {"Idempotency-Key": "retry-2"}, {"Idempotency-Key": "bad key"}):
        late = await client.post(url, headers={"Authorization": f"Bearer {ended}", **headers})
        assert_error(late, 410, "token_expired")
    # and the replay is the shopper's own: someone else's expired token gets nothing
    other = signer.sign(replace(shopper, visitor="someone-else", exp=time.time() - 5))
    stolen = await client.post(
        url, headers={"Authorization": f"Bearer {other}", "Idempotency-Key": "retry-1"}
    )
    assert_error(stolen, 410, "token_expired")
