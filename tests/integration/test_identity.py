"""Sales that require the shop's identity: real JWTs signed with keys made here, the JWKS as a
file and served by a real HTTP server, through the real API on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Signer
from tests.support import Clock, app_for, sale_body
from tests.support.identity import AUDIENCE, ISSUER, Issuer

Api = tuple[httpx.AsyncClient, Services]


@pytest.fixture
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.new_key("key-1")
    return issuer


@pytest.fixture
def with_identity(
    settings: Settings,
    redis: Redis,
    raw_redis: Redis,
    pool: asyncpg.Pool,
    signer: Signer,
    clock: Clock,
) -> Callable[..., Any]:
    """The real app with an identity provider configured (`**identity`: the settings)."""

    @asynccontextmanager
    async def open_api(**identity: Any) -> AsyncIterator[Api]:
        configured = replace(
            settings, identity_issuer=ISSUER, identity_audience=AUDIENCE, **identity
        )
        configured.validate()
        room = WaitingRoom(redis, configured, signer, clock=clock)
        services = Services.build(
            configured, redis, raw_redis, pool, room=room, sales=Sales(pool, room, clock.now)
        )
        transport = httpx.ASGITransport(app=app_for(services), client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, services

    return open_api


async def identity_sale(services: Services, **overrides: Any) -> str:
    body = sale_body(identity={"required": True}, **overrides)
    return (await services.sales.create(body)).id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response: httpx.Response, code: str = "invalid_identity") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_one_subject_gets_one_place_whatever_its_cookies(
    with_identity: Callable[..., Any], issuer: Issuer, tmp_path: Path, redis: Redis
) -> None:
    async with with_identity(identity_jwks_file=str(issuer.write(tmp_path / "jwks.json"))) as (
        client,
        services,
    ):
        sale = await identity_sale(services)
        # someone else first, so our place is not trivially the first
        other = await client.post(f"/api/sales/{sale}/join", headers=bearer(issuer.token("bob")))
        assert other.status_code == 201, other.text
        token = issuer.token("alice@shop.example")
        answers = []
        for n in range(10):  # ten browsers, tabs or devices: ten different cookies
            headers = {**bearer(token), "Cookie": f"fs_vid=cookie-{n:04d}-xyz"}
            if n % 2:
                headers["X-Visitor-Id"] = f"header-{n:04d}"
            answer = await client.post(f"/api/sales/{sale}/join", headers=headers)
            answers.append(answer)
        assert [a.status_code for a in answers] == [201] + [200] * 9
        visitors = {a.json()["visitor_id"] for a in answers}
        assert len(visitors) == 1
        visitor = visitors.pop()
        assert visitor.startswith("id-") and "alice" not in visitor
        assert visitor != other.json()["visitor_id"]
        # the cookie is set to the subject's visitor id, so the page keeps using it
        assert all(f"fs_vid={visitor}" in a.headers["set-cookie"] for a in answers)
        counters = await services.room.counters(sale)
        assert counters.joined == 2  # bob and alice
        async for key in redis.scan_iter(match=f"{services.settings.redis_prefix}:{{{sale}}}:*"):
            assert "alice" not in key
        assert "alice" not in str(await redis.hgetall(services.room.keys(sale).visitors(visitor)))


async def test_the_place_polls_holds_and_orders_as_the_subject(
    with_identity: Callable[..., Any], issuer: Issuer, tmp_path: Path, clock: Clock
) -> None:
    async with with_identity(identity_jwks_file=str(issuer.write(tmp_path / "jwks.json"))) as (
        client,
        services,
    ):
        sale_id = await identity_sale(services, per_shopper_limit=1)
        joined = (
            await client.post(f"/api/sales/{sale_id}/join", headers=bearer(issuer.token("carol")))
        ).json()
        visitor = joined["visitor_id"]
        sale = await services.sales.get(sale_id)
        clock.advance(sale.opens_at.timestamp() - clock() + 1)  # the sale opens
        poll = {"X-Queue-Ticket": joined["ticket"], "X-Visitor-Id": visitor}
        assert (await client.get(f"/api/sales/{sale_id}/status", headers=poll)).status_code == 200
        while (await services.room.admit_once(sale_id)).outcome in ("opened", "wait"):
            clock.advance(0.1)
        status = await client.get(f"/api/sales/{sale_id}/status", headers=poll)
        assert status.json()["state"] == "admitted", status.text
        token = status.json()["admission_token"]
        held = await client.post(
            f"/api/sales/{sale_id}/holds", headers=bearer(token), json={"quantity": 1}
        )
        assert held.status_code == 201, held.text
        # the same subject from another device: same place, same admission, same limit
        again = await client.post(
            f"/api/sales/{sale_id}/join",
            headers={**bearer(issuer.token("carol")), "Cookie": "fs_vid=another-device-01"},
        )
        assert again.json()["visitor_id"] == visitor and again.json()["state"] == "admitted"
        more = await client.post(
            f"/api/sales/{sale_id}/holds",
            headers=bearer(again.json()["admission_token"]),
            json={"quantity": 1},
        )
        assert more.status_code == 409 and more.json()["error"]["code"] == "limit_reached"
        orders = await client.get(f"/api/sales/{sale_id}/orders", headers={"X-Visitor-Id": visitor})
        assert [o["id"] for o in orders.json()["orders"]] == [held.json()["id"]]
        stranger = await client.get(
            f"/api/sales/{sale_id}/orders", headers={"X-Visitor-Id": "stranger-0001"}
        )
        assert stranger.json()["orders"] == []


async def test_tokens_that_identify_nobody_are_refused(
    with_identity: Callable[..., Any], issuer: Issuer, tmp_path: Path
) -> None:
    issuer.new_key("key-ec", "ES256")
    issuer.new_key("unpublished", publish=False)
    async with with_identity(identity_jwks_file=str(issuer.write(tmp_path / "jwks.json"))) as (
        client,
        services,
    ):
        sale = await identity_sale(services)
        url = f"/api/sales/{sale}/join"
        assert (await client.post(url, headers=bearer(issuer.token("dan")))).status_code == 201
        ec = await client.post(url, headers=bearer(issuer.token("erin", kid="key-ec")))
        assert ec.status_code == 201, ec.text  # ES256 is accepted too

        assert_refused(await client.post(url), "identity_required")
        assert_refused(
            await client.post(url, headers={"Authorization": "Basic Zm9vOmJhcg=="}),
            "identity_required",
        )
        now = int(time.time())
        refused = {
            "not a jwt": "not-a-jwt",
            "wrong issuer": issuer.token("dan", iss="https://evil.example"),
            "wrong audience": issuer.token("dan", aud="another-app"),
            "expired": issuer.token("dan", exp=now - 120, iat=now - 900),
            "no expiry": issuer.token("dan", exp=None),
            "no subject": issuer.token("dan", sub=None),
            "not yet valid": issuer.token("dan", nbf=now + 600),
            "unknown key": issuer.token("dan", kid="unpublished"),
            "alg none": issuer.forged("dan", {"alg": "none", "kid": "key-1", "typ": "JWT"}, None),
            "unsigned": issuer.token("dan").rsplit(".", 1)[0] + ".",
            "HS256 with the public key": issuer.forged(
                "dan", {"alg": "HS256", "kid": "key-1", "typ": "JWT"}, issuer.public_pem("key-1")
            ),
            "tampered subject": _tampered(issuer.token("dan")),
        }
        for name, token in refused.items():
            answer = await client.post(url, headers=bearer(token))
            assert answer.status_code == 401, (name, answer.text)
            assert_refused(answer)
        assert (await services.room.counters(sale)).joined == 2


def _tampered(token: str) -> str:
    import base64
    import json

    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


async def test_jwks_url_rotation_refreshes_once_per_cooldown(
    with_identity: Callable[..., Any], issuer: Issuer
) -> None:
    with issuer.served() as url:
        async with with_identity(
            identity_jwks_url=url,
            identity_jwks_cooldown_seconds=1.0,
            identity_jwks_ttl_seconds=300.0,
        ) as (client, services):
            sale = await identity_sale(services)
            join = f"/api/sales/{sale}/join"
            assert (await client.post(join, headers=bearer(issuer.token("f")))).status_code == 201
            assert issuer.jwks_requests == 1
            assert (await client.post(join, headers=bearer(issuer.token("g")))).status_code == 201
            assert issuer.jwks_requests == 1  # cached

            issuer.new_key("key-2")  # the provider rotates: a new kid is published
            rotated = issuer.token("h", kid="key-2")
            # within the cooldown of the last read, an unknown kid is refused without a read
            assert_refused(await client.post(join, headers=bearer(rotated)))
            assert issuer.jwks_requests == 1
            await asyncio.sleep(1.1)
            assert (await client.post(join, headers=bearer(rotated))).status_code == 201
            assert issuer.jwks_requests == 2  # one refresh found the new key
            for n in range(5):  # made-up kids cannot make the server hammer the provider
                fake = issuer.forged("i", {"alg": "RS256", "kid": f"made-up-{n}"}, b"x")
                assert_refused(await client.post(join, headers=bearer(fake)))
            assert issuer.jwks_requests == 2
            # tokens of the old key still pass while it is published
            assert (await client.post(join, headers=bearer(issuer.token("f")))).status_code == 200


async def test_jwks_file_rotation_and_ttl(
    with_identity: Callable[..., Any], issuer: Issuer, tmp_path: Path
) -> None:
    path = issuer.write(tmp_path / "jwks.json")
    async with with_identity(
        identity_jwks_file=str(path),
        identity_jwks_ttl_seconds=1.0,
        identity_jwks_cooldown_seconds=0.5,
    ) as (client, services):
        sale = await identity_sale(services)
        join = f"/api/sales/{sale}/join"
        assert (await client.post(join, headers=bearer(issuer.token("j")))).status_code == 201
        issuer.new_key("key-2")
        issuer.published.remove("key-1")  # the old key is withdrawn
        issuer.write(path)
        await asyncio.sleep(0.6)  # past the cooldown: the new kid triggers a re-read
        assert (
            await client.post(join, headers=bearer(issuer.token("k", kid="key-2")))
        ).status_code == 201
        await asyncio.sleep(1.1)  # past the TTL: the withdrawn key stops verifying
        assert_refused(await client.post(join, headers=bearer(issuer.token("j", kid="key-1"))))


async def test_unreachable_provider_is_a_503_not_a_refusal(
    with_identity: Callable[..., Any], issuer: Issuer
) -> None:
    with issuer.served() as url:
        pass  # the server is gone: its port refuses connections
    async with with_identity(identity_jwks_url=url) as (client, services):
        sale = await identity_sale(services)
        answer = await client.post(f"/api/sales/{sale}/join", headers=bearer(issuer.token("l")))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "identity_unavailable"
        assert answer.headers["retry-after"]


async def test_identity_needs_a_provider_and_cannot_change_once_open(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    with_identity: Callable[..., Any],
    issuer: Issuer,
    tmp_path: Path,
    clock: Clock,
) -> None:
    refused = await client.post(
        "/admin/sales", json=sale_body(identity={"required": True}), headers=admin_headers
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "identity.required"
    async with with_identity(identity_jwks_file=str(issuer.write(tmp_path / "jwks.json"))) as (
        _,
        services,
    ):
        sale = await identity_sale(services)
        await services.sales.update(sale, {"identity": {"required": False}})  # before: fine
        clock.advance(2 * 3600)  # the sale has opened
        with pytest.raises(Exception, match="cannot change once the sale has opened"):
            await services.sales.update(sale, {"identity": {"required": True}})
