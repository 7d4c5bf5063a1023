"""A price on scripted joins: the proof-of-work flow through the real API (real Redis and
PostgreSQL), solved with ALTCHA's own Python solver."""

from __future__ import annotations

import time
from typing import Any

import altcha
import httpx

from flashsale.waiting_room.admitter import Admitter
from flashsale.waiting_room.pow import MAX_RAISE_BITS, Pace
from flashsale.waiting_room.services import Services
from tests.support import sale_body

BITS = 8  # small, so the test solves fast; the real default is measured in test_scripted_joins


def solve(challenge: dict[str, Any]) -> str:
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


def refused(answer: httpx.Response, code: str) -> dict[str, Any]:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["error"]["code"] == code, body
    assert answer.headers["cache-control"] == "no-store"
    assert "set-cookie" not in answer.headers  # no visitor is made for a refused join
    challenge: dict[str, Any] = body["challenge"]
    return challenge


async def priced_sale(services: Services, bits: int = BITS) -> str:
    return (await services.sales.create(sale_body(proof_of_work={"difficulty": bits}))).id


async def test_a_new_place_costs_one_solution(
    client: httpx.AsyncClient, services: Services
) -> None:
    sale = await priced_sale(services)
    join = f"/api/sales/{sale}/join"
    challenge = refused(await client.post(join), "proof_of_work_required")
    assert challenge["parameters"]["keyPrefix"] == "00" and challenge["parameters"]["cost"] == 1
    assert challenge["parameters"]["data"]["sale"] == sale
    payload = solve(challenge)
    joined = await client.post(join, headers={"X-Proof-Of-Work": payload})
    assert joined.status_code == 201, joined.text
    visitor = joined.json()["visitor_id"]
    assert f"fs_vid={visitor}" in joined.headers["set-cookie"]

    # the same solution again, without a cookie (a script dropping it): spent
    client.cookies.clear()
    again = await client.post(join, headers={"X-Proof-Of-Work": payload})
    fresh = refused(again, "proof_of_work_spent")
    assert fresh["signature"] != challenge["signature"]  # a new challenge to solve

    # the visitor who has a place reloads, opens a tab: no proof needed, same place
    for _ in range(3):
        back = await client.post(join, headers={"X-Visitor-Id": visitor})
        assert back.status_code == 200 and back.json()["visitor_id"] == visitor, back.text
    assert (await services.room.counters(sale)).joined == 1


async def test_a_challenge_is_for_one_visitor_and_one_sale(
    client: httpx.AsyncClient, services: Services
) -> None:
    sale, other_sale = await priced_sale(services), await priced_sale(services)
    # a visitor id the server never saw (a fresh cookie): the room asks for a proof
    mine = {"X-Visitor-Id": "fresh-cookie-0001"}
    challenge = refused(
        await client.post(f"/api/sales/{sale}/join", headers=mine), "proof_of_work_required"
    )
    assert challenge["parameters"]["data"]["for"] == "v:fresh-cookie-0001"
    payload = solve(challenge)
    client.cookies.clear()
    for headers, url in (
        ({"X-Visitor-Id": "fresh-cookie-0002"}, f"/api/sales/{sale}/join"),  # someone else
        ({}, f"/api/sales/{sale}/join"),  # no visitor: the address
        (mine, f"/api/sales/{other_sale}/join"),  # another sale
    ):
        answer = await client.post(url, headers={**headers, "X-Proof-Of-Work": payload})
        refused(answer, "proof_of_work_mismatch")
    joined = await client.post(
        f"/api/sales/{sale}/join", headers={**mine, "X-Proof-Of-Work": payload}
    )
    assert joined.status_code == 201 and joined.json()["visitor_id"] == "fresh-cookie-0001"


async def test_garbage_proofs_get_a_challenge_not_a_500(
    client: httpx.AsyncClient, services: Services
) -> None:
    sale = await priced_sale(services)
    for garbage in ("x", "eyJ9", "bm90IGpzb24=", "W10=", "e30=", "a" * 5000):
        answer = await client.post(f"/api/sales/{sale}/join", headers={"X-Proof-Of-Work": garbage})
        refused(answer, "proof_of_work_invalid")


async def test_anonymous_sales_without_a_price_and_identity_sales_need_no_proof(
    client: httpx.AsyncClient, services: Services
) -> None:
    free = (await services.sales.create(sale_body())).id
    assert (await client.post(f"/api/sales/{free}/join")).status_code == 201
    sale = await services.sales.get(free)
    assert sale.pow_difficulty == 0
    assert sale.public(sale.opens_at)["proof_of_work_required"] is False


async def test_the_admitter_raises_the_price_while_joins_outpace_admission(
    client: httpx.AsyncClient, services: Services
) -> None:
    sale_id = await priced_sale(services)
    sale = await services.sales.get(sale_id)
    admitter = Admitter(
        services.sales, services.room, services.stock, tick_ms=100, refresh_seconds=5
    )
    pace = admitter._paces.setdefault(sale_id, Pace())

    async def measured(joins_in_ten_seconds: int) -> int:
        """The difficulty after the admitter saw that many joins over the last ten seconds
        (before the opening: admission will take 10 per 50 ms, 200 a second)."""
        counters = await services.room.counters(sale_id)
        pace.samples.clear()
        pace.add(time.monotonic() - 10, counters.joined - joins_in_ten_seconds, 0)
        await admitter.price_joins(sale, counters)
        return (await services.room.counters(sale_id)).pow_difficulty

    assert await measured(1000) == BITS  # 100 a second: the line drains faster
    assert await measured(5000) == BITS + 1  # 500 a second: more than twice as fast
    challenge = refused(await client.post(f"/api/sales/{sale_id}/join"), "proof_of_work_required")
    assert challenge["parameters"]["cost"] == 2  # 9 bits: "00" and two rounds an attempt
    assert await measured(1_000_000) == BITS + MAX_RAISE_BITS
    assert await measured(0) == BITS  # calm again: back to the sale's own difficulty
