"""The front door (api/front.py) and the request-parsing layer (api/inputs.py) on the real app:
one way in for every route, and the same rules for every input of every route."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flashsale.api.app import create_app
from flashsale.api.front import App, IndexedRouter, Reply
from flashsale.waiting_room.autopipeline import shared_for
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import TICKET, Claims, Signer
from tests.support import Admit, app_for

JSON = {"Content-Type": "application/json"}


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error.get("field") == field, error
    return dict(error)


async def an_order(client: httpx.AsyncClient, make_sale: Any, admit: Admit, signer: Signer) -> Any:
    sale = await make_sale(stock=20)
    (shopper,) = await admit(sale, 1)
    held = await client.post(
        f"/api/sales/{sale.id}/holds", headers={"Authorization": f"Bearer {signer.sign(shopper)}"}
    )
    assert held.status_code == 201, held.text
    return sale, shopper, held.json()


# -- order ids in every spelling ---------------------------------------------------------------


async def test_order_ids_in_any_uuid_spelling_name_the_same_order(
    client: httpx.AsyncClient, make_sale: Any, admit: Admit, signer: Signer
) -> None:
    sale, shopper, order = await an_order(client, make_sale, admit, signer)
    u = uuid.UUID(order["id"])
    who = {"X-Visitor-Id": shopper.visitor}
    base = f"/api/sales/{sale.id}/orders"
    for spelling in (
        str(u).upper(),
        u.hex,
        u.hex.upper(),
        f"{{{u}}}",
        f"urn:uuid:{u}",
        f"URN:UUID:{str(u).upper()}",
    ):
        got = await client.get(f"{base}/{spelling}", headers=who)
        assert got.status_code == 200, (spelling, got.text)
        assert got.json()["id"] == str(u)  # answered under its canonical id
    # pay and cancel accept them too: pay by one spelling, cancel (refund) by another
    paid = await client.post(f"{base}/{u.hex.upper()}/pay", headers=who, json={})
    assert paid.status_code == 200 and paid.json()["status"] == "confirmed", paid.text
    cancelled = await client.post(f"{base}/urn:uuid:{u}/cancel", headers=who)
    assert cancelled.status_code == 200 and cancelled.json()["id"] == str(u), cancelled.text


@pytest.mark.parametrize(
    "bad",
    [
        "not-an-order",
        "1234",
        "+2345678123412341234123456789012",
        "1234_678123412341234123456789012",
        "{12345678-1234-1234-1234-1234567890ab",
        "12345678-1234-1234-1234-1234567890ab%0A",
        "%00",
        "g" * 32,
        "12345678-1234-1234-1234-1234567890ab" * 3,
    ],
)
async def test_anything_else_is_no_such_order_on_every_order_route(
    client: httpx.AsyncClient, make_sale: Any, bad: str
) -> None:
    sale = await make_sale()
    who = {"X-Visitor-Id": "visitor-0001"}
    base = f"/api/sales/{sale.id}/orders/{bad}"
    for method, url in (("GET", base), ("POST", f"{base}/pay"), ("POST", f"{base}/cancel")):
        assert_error(await client.request(method, url, headers=who), 404, "unknown_order")


async def test_a_well_formed_order_id_nobody_has_is_no_such_order(
    client: httpx.AsyncClient, make_sale: Any
) -> None:
    sale = await make_sale()
    who = {"X-Visitor-Id": "visitor-0001"}
    base = f"/api/sales/{sale.id}/orders/{str(uuid.uuid4()).upper()}"
    for method, url in (("GET", base), ("POST", f"{base}/pay"), ("POST", f"{base}/cancel")):
        assert_error(await client.request(method, url, headers=who), 404, "unknown_order")


# -- bodies ------------------------------------------------------------------------------------

NOT_OBJECTS = [b"null", b"0", b"false", b'""', b"[]", b"{}[]"]


async def test_a_body_that_is_not_an_object_is_refused_on_every_route_taking_one(
    client: httpx.AsyncClient,
    make_sale: Any,
    admit: Admit,
    signer: Signer,
    admin_headers: dict[str, str],
) -> None:
    sale, shopper, order = await an_order(client, make_sale, admit, signer)
    ticket = signer.sign(Claims(TICKET, sale.id, shopper.visitor, shopper.index, time.time() + 60))
    admission = {"Authorization": f"Bearer {signer.sign(shopper)}"}
    who = {"X-Visitor-Id": shopper.visitor}
    order_url = f"/api/sales/{sale.id}/orders/{order['id']}"
    routes = [
        (f"/api/sales/{sale.id}/join", {}),
        (f"/api/sales/{sale.id}/leave", {"X-Queue-Ticket": ticket}),
        (f"/api/sales/{sale.id}/holds", admission),
        (f"{order_url}/pay", who),
        (f"{order_url}/cancel", who),
        (f"/admin/sales/{sale.id}/close", admin_headers),
        (f"/admin/sales/{sale.id}/prewarm", admin_headers),
        (f"/admin/sales/{sale.id}/reconcile", admin_headers),
    ]
    for url, headers in routes:
        for raw in NOT_OBJECTS:
            response = await client.post(url, content=raw, headers={**headers, **JSON})
            status = 400 if raw == b"{}[]" else 422
            assert_error(response, status, field=None if status == 400 else "body")
    # nothing happened: the hold is still held
    assert (await client.get(order_url, headers=who)).json()["status"] == "held"


async def test_unknown_fields_are_refused(
    client: httpx.AsyncClient, make_sale: Any, admit: Admit, signer: Signer
) -> None:
    sale, shopper, order = await an_order(client, make_sale, admit, signer)
    who = {"X-Visitor-Id": shopper.visitor}
    order_url = f"/api/sales/{sale.id}/orders/{order['id']}"
    for url, body, field in (
        (f"/api/sales/{sale.id}/join", {"visitor": "x"}, "visitor"),
        (f"{order_url}/pay", {"payment_token": "tok_approve", "amount": 1}, "amount"),
        (f"{order_url}/cancel", {"reason": "changed my mind"}, "reason"),
        (
            f"/api/sales/{sale.id}/holds",
            {"quantity": 1, "qty": 2},
            "qty",
        ),
    ):
        headers = {**who, "Authorization": f"Bearer {signer.sign(shopper)}"}
        assert_error(await client.post(url, json=body, headers=headers), 422, "invalid", field)
    # an empty object is no fields at all, as is no body
    assert (await client.post(f"/api/sales/{sale.id}/join", json={})).status_code == 201


# -- query parameters, headers, paths ----------------------------------------------------------


async def test_query_parameters_an_endpoint_does_not_define_are_refused(
    client: httpx.AsyncClient, make_sale: Any, signer: Signer, admin_headers: dict[str, str]
) -> None:
    sale = await make_sale()
    ticket = signer.sign(Claims(TICKET, sale.id, "visitor-0001", 0, time.time() + 60))
    status = f"/api/sales/{sale.id}/status"
    t = {"X-Queue-Ticket": ticket}
    assert (await client.get(status, params={"hb": "1"}, headers=t)).status_code == 200
    assert_error(await client.get(f"{status}?hb=1&hbb=2", headers=t), 400, field="hbb")
    assert_error(await client.get(f"{status}?hb=1&hb=2", headers=t), 400, field="hb")
    assert_error(await client.get(f"{status}?hb=-1", headers=t), 400, field="hb")
    assert_error(await client.get(f"/api/sales/{sale.id}?x=1"), 400, field="x")
    assert_error(await client.post(f"/api/sales/{sale.id}/join?utm_source=x"), 400)
    listed = await client.get(
        "/admin/sales?include_closed=false&closed=true", headers=admin_headers
    )
    assert_error(listed, 400, field="closed")
    check = await client.get(f"/admin/sales/{sale.id}/reconcile?repair=true", headers=admin_headers)
    assert_error(check, 400, field="repair")  # repairing is for POST
    # the pages ignore what they do not read (links carry tracking parameters, ?lang=)
    for url in ("/?utm_source=x", f"/sales/{sale.id}?lang=ko&utm=1", "/static/app.js?v=1&x=2"):
        assert (await client.get(url)).status_code == 200, url


async def test_a_header_the_api_reads_given_twice_is_refused(
    client: httpx.AsyncClient, make_sale: Any, signer: Signer
) -> None:
    sale = await make_sale()
    ticket = signer.sign(Claims(TICKET, sale.id, "visitor-0001", 0, time.time() + 60))
    status = f"/api/sales/{sale.id}/status"
    for name, value in (
        ("X-Visitor-Id", "visitor-0001"),
        ("X-Queue-Ticket", ticket),
        ("Authorization", "Bearer x"),
    ):
        headers = [("X-Queue-Ticket", ticket), (name, value), (name, value)]
        if name == "X-Queue-Ticket":
            headers = headers[1:]
        response = await client.get(status, headers=headers)
        if name == "Authorization":  # a poll does not read it: not its business
            assert response.status_code == 200
        else:
            assert_error(response, 400, field=name)
    hold = await client.post(
        f"/api/sales/{sale.id}/holds",
        headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    )
    assert_error(hold, 400, field="Authorization")
    # several Cookie headers are one list of cookies (HTTP/2 splits them so)
    joined = await client.post(
        f"/api/sales/{sale.id}/join", headers=[("Cookie", "a=1"), ("Cookie", "fs_vid=visitor-0002")]
    )
    assert joined.status_code == 201 and joined.json()["visitor_id"] == "visitor-0002"


async def test_ids_with_a_trailing_newline_are_refused(
    client: httpx.AsyncClient, make_sale: Any, signer: Signer
) -> None:
    sale = await make_sale()
    assert_error(await client.get(f"/api/sales/{sale.id}%0A"), 404, "unknown_sale")
    # a quoted cookie may carry an escaped newline: still not a visitor id
    response = await client.post(
        f"/api/sales/{sale.id}/join", headers={"Cookie": 'fs_vid="visitor-0001\\012"'}
    )
    assert_error(response, 400, field="visitor_id")


async def test_a_trailing_slash_is_no_such_endpoint(client: httpx.AsyncClient) -> None:
    for path in ("/healthz/", "/admin/sales/", "/api/sales/x/join/"):
        assert_error(await client.get(path), 404, "not_found")


async def test_head_is_answered_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/healthz")
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["content-length"]) > 0


# -- one way in ------------------------------------------------------------------------------


async def test_middleware_added_to_the_app_sees_every_route_hot_or_not(
    services: Services, make_sale: Any, admit: Admit, signer: Signer, clock: Any
) -> None:
    seen: list[tuple[str, str]] = []

    class Recorder:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append((scope["method"], scope["path"].rsplit("/", 1)[-1]))
            await self.app(scope, receive, send)

    app = app_for(services)
    app.add_middleware(Recorder)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    sale = await make_sale()
    (shopper,) = await admit(sale, 1)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        joined = await http.post(f"/api/sales/{sale.id}/join")
        polled = await http.get(
            f"/api/sales/{sale.id}/status", headers={"X-Queue-Ticket": joined.json()["ticket"]}
        )
        http.cookies.clear()  # the joiner's cookie is not the shopper's
        held = await http.post(
            f"/api/sales/{sale.id}/holds",
            headers={"Authorization": f"Bearer {signer.sign(shopper)}"},
        )
        unknown = await http.get("/nowhere")
    assert [joined.status_code, polled.status_code, held.status_code] == [201, 200, 201]
    assert unknown.status_code == 404
    assert seen == [("POST", "join"), ("GET", "status"), ("POST", "holds"), ("GET", "nowhere")]


async def test_a_remembered_match_answers_as_matching_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router remembers full matches by method and path: a request on a path seen before
    gets what Starlette's matching gave (route, its own path parameters), another method on
    it is matched afresh (405, or another route), and a full memory starts again."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Echo:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append((self.name, dict(scope["path_params"])))
            scope["path_params"]["id"] = "changed by the endpoint"  # not seen by the next
            await Reply(204, b"", []).send(scope, send)

    routes = [
        Route("/a/{id}/s", Echo("get-s"), methods=["GET"]),
        Route("/a/{id}/{rest}", Echo("post-any"), methods=["POST"]),
    ]
    app = App(routes, lifespan=None, access_log=False)  # type: ignore[arg-type]
    monkeypatch.setattr(IndexedRouter, "MATCHES_KEPT", 3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        codes = [
            (await http.request(method, path)).status_code
            for method, path in [
                ("GET", "/a/1/s"),
                ("GET", "/a/1/s"),
                ("POST", "/a/1/s"),
                ("PUT", "/a/1/s"),
                ("GET", "/a/2/s"),
                ("GET", "/a/1/s"),
                ("POST", "/a/3/x"),  # the memory is full (3): it starts again
                ("GET", "/a/1/s"),
                ("GET", "/a/2/s"),
            ]
        ]
    assert codes == [204, 204, 204, 405, 204, 204, 204, 204, 204]
    assert seen == [
        ("get-s", {"id": "1"}),
        ("get-s", {"id": "1"}),
        ("post-any", {"id": "1", "rest": "s"}),
        ("get-s", {"id": "2"}),
        ("get-s", {"id": "1"}),
        ("post-any", {"id": "3", "rest": "x"}),
        ("get-s", {"id": "1"}),
        ("get-s", {"id": "2"}),
    ]
    assert isinstance(app.router, IndexedRouter) and len(app.router._matched) <= 3


async def test_the_access_log_changes_no_answer(
    services: Services, client: httpx.AsyncClient, make_sale: Any
) -> None:
    """The same code answers with the log on or off: only the request id differs."""
    logged = dataclasses.replace(
        services, settings=dataclasses.replace(services.settings, access_log=True)
    )
    transport = httpx.ASGITransport(app=app_for(logged), client=("203.0.113.7", 40000))
    sale = await make_sale()
    who = {"X-Visitor-Id": "visitor-0042"}
    joined = await client.post(f"/api/sales/{sale.id}/join", headers=who)
    assert joined.status_code == 201
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for method, url, headers in (
            ("POST", f"/api/sales/{sale.id}/join", who),
            ("GET", f"/api/sales/{sale.id}/status", {"X-Queue-Ticket": joined.json()["ticket"]}),
            ("GET", f"/api/sales/{sale.id}/status", {}),
            ("GET", f"/api/sales/{sale.id}/status?hb=x", {"X-Queue-Ticket": "a.b"}),
        ):
            answers = []
            for c in (client, http):
                c.cookies.clear()
                answers.append(
                    await c.request(method, url, headers={**headers, "X-Request-ID": "same"})
                )
            off, on = answers
            assert (off.status_code, off.headers) == (on.status_code, on.headers)
            body_off, body_on = off.json(), on.json()
            for body in (body_off, body_on):
                body.pop("ticket", None)  # signed anew each time
            assert body_off == body_on


# -- a data store that does not answer ---------------------------------------------------------


async def test_a_silent_redis_makes_a_poll_wait_once_and_answer_503(
    services: Services, make_sale: Any, signer: Signer
) -> None:
    """A poll whose Redis never answers waits FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS once
    (there is no second path to fall back on and wait again) and answers 503, Retry-After."""
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.append(chunk)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = dataclasses.replace(
        services.settings,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_command_timeout_seconds=0.5,
        status_cache_ms=0,
    )
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    raw_redis = Redis.from_url(settings.redis_url)
    silent_services = Services.build(settings, redis, raw_redis, services.pool)
    app = create_app(settings)
    app.state.services = silent_services
    sale = await make_sale()
    ticket = signer.sign(Claims(TICKET, sale.id, "visitor-0001", 0, time.time() + 60))
    try:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get(
                f"/api/sales/{sale.id}/status", headers={"X-Queue-Ticket": ticket}
            )
        assert_error(response, 503, "unavailable")
        assert response.headers["retry-after"] == "1"
        asked = b"".join(received)
        assert asked.count(b"HGETALL") == 1, asked  # the room was asked for once, not twice
    finally:
        await shared_for(redis, settings.redis_command_timeout_seconds).aclose()
        await redis.aclose()
        await raw_redis.aclose()
        server.close()
        await server.wait_closed()


async def test_request_ids_are_kept_or_made_up(client: httpx.AsyncClient) -> None:
    mine = secrets.token_hex(8)
    assert (await client.get("/healthz", headers={"X-Request-ID": mine})).headers[
        "x-request-id"
    ] == mine
    made = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(3)]
    assert len(set(made)) == 3
