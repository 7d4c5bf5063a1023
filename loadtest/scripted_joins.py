"""A script after many places, measured: joins from one address, each with a fresh cookie.

Against a running API (`--url`), three sales (created through the admin API):

- anonymous, no proof of work: every join brings a new cookie, so only the per-address rate
  limit stands in the way. Places won are bounded by the limit times the windows the run spans.
- anonymous, with a proof of work at the default difficulty: joins without a solution win
  nothing; `--solved` joins are solved with ALTCHA's Python solver, timing the CPU each
  solution costs, so the cost of N places is N times that (the run does not spend the CPU of
  10,000 solutions: it measures one and multiplies, and says so).
- identity required (with `--identity-token`, a JWT of the configured provider): the same
  number of fresh-cookie joins with one subject's token win one place; without a token, none.

Prints one line of JSON with every figure. tests/system/test_scripted_joins.py runs it against
a real API process and asserts the bounds; docs/waiting-room.md quotes its figures.

    python -m loadtest.scripted_joins --url http://127.0.0.1:8000 --admin-token "$T"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import altcha
import httpx

from flashsale.waiting_room.sale import DEFAULT_POW_DIFFICULTY


def fresh_cookie() -> str:
    return secrets.token_urlsafe(12)


async def create_sale(client: httpx.AsyncClient, admin_token: str, **extra: Any) -> str:
    now = datetime.now(UTC)
    sale_id = f"scripted-{secrets.token_hex(4)}"
    body = {
        "id": sale_id,
        "name": "Scripted joins",
        "stock": 100,
        "opens_at": (now + timedelta(hours=1)).isoformat(),
        "closes_at": (now + timedelta(hours=2)).isoformat(),
        **extra,
    }
    answer = await client.post(
        "/admin/sales", json=body, headers={"Authorization": f"Bearer {admin_token}"}
    )
    answer.raise_for_status()
    return sale_id


async def fresh_cookie_joins(
    client: httpx.AsyncClient,
    sale_id: str,
    joins: int,
    concurrency: int,
    headers: Callable[[], dict[str, str]] = dict,
) -> dict[str, Any]:
    """`joins` joins, each with a fresh cookie: the answers' statuses and the places won."""
    statuses: Counter[int] = Counter()
    places: set[str] = set()
    queue = iter(range(joins))

    async def worker() -> None:
        for _ in queue:
            answer = await client.post(
                f"/api/sales/{sale_id}/join", headers={"X-Visitor-Id": fresh_cookie(), **headers()}
            )
            statuses[answer.status_code] += 1
            if answer.status_code in (200, 201):
                places.add(answer.json()["visitor_id"])

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    return {
        "joins": joins,
        "places": len(places),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 2),
    }


async def solved_joins(client: httpx.AsyncClient, sale_id: str, count: int) -> dict[str, Any]:
    """`count` new places bought with a proof of work each; the CPU each solution took."""
    cpu: list[float] = []
    hashes = 0
    places = 0
    for _ in range(count):
        cookie = fresh_cookie()
        refused = await client.post(f"/api/sales/{sale_id}/join", headers={"X-Visitor-Id": cookie})
        challenge = altcha.Challenge.from_dict(refused.json()["challenge"])
        started = time.process_time()
        solution = altcha.solve_challenge(challenge)
        cpu.append(time.process_time() - started)
        assert solution is not None
        hashes += (solution.counter + 1) * challenge.parameters.cost
        payload = altcha.Payload(challenge, solution).to_base64()
        joined = await client.post(
            f"/api/sales/{sale_id}/join",
            headers={"X-Visitor-Id": cookie, "X-Proof-Of-Work": payload},
        )
        places += joined.status_code == 201
    total = sum(cpu)
    return {
        "solved": count,
        "places": places,
        "cpu_seconds": round(total, 3),
        "cpu_seconds_per_place": round(total / count, 4),
        "hashes_per_second": round(hashes / total) if total else None,
    }


async def run(
    url: str,
    admin_token: str,
    *,
    joins: int = 10_000,
    solved: int = 20,
    identity_token: str | None = None,
    address_limit: int = 600,
    window_s: int = 10,
    concurrency: int = 16,
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # rate limits count per sale and address: each scenario starts with a fresh count
        anonymous_sale = await create_sale(client, admin_token)
        anonymous = await fresh_cookie_joins(client, anonymous_sale, joins, concurrency)
        windows = math.floor(anonymous["seconds"] / window_s) + 1
        anonymous.update(windows=windows, bound=address_limit * windows)

        pow_sale = await create_sale(
            client, admin_token, proof_of_work={"difficulty": DEFAULT_POW_DIFFICULTY}
        )
        priced = await solved_joins(client, pow_sale, solved)
        unsolved = await fresh_cookie_joins(client, pow_sale, joins, concurrency)
        per_place = priced["cpu_seconds_per_place"]
        priced.update(
            difficulty_bits=DEFAULT_POW_DIFFICULTY,
            expected_hashes_per_place=2**DEFAULT_POW_DIFFICULTY,
            # a hash rate is steadier than a mean over a few solutions (each is geometric)
            expected_cpu_seconds_per_place=round(
                2**DEFAULT_POW_DIFFICULTY / priced["hashes_per_second"], 4
            ),
            unsolved=unsolved,
            cpu_seconds_for_all_joins=round(joins * per_place),
            places_per_window_per_core=min(address_limit, math.floor(window_s / per_place)),
        )
        result: dict[str, Any] = {
            "joins": joins,
            "address_limit": address_limit,
            "window_seconds": window_s,
            "anonymous": anonymous,
            "proof_of_work": priced,
        }
        if identity_token:
            identity_sale = await create_sale(client, admin_token, identity={"required": True})
            without = await fresh_cookie_joins(client, identity_sale, joins // 10, concurrency)
            one_subject = await fresh_cookie_joins(
                client,
                identity_sale,
                joins,
                concurrency,
                lambda: {"Authorization": f"Bearer {identity_token}"},
            )
            result["identity"] = {"without_token": without, "one_subject": one_subject}
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--joins", type=int, default=10_000)
    parser.add_argument("--solved", type=int, default=20)
    parser.add_argument("--identity-token")
    parser.add_argument("--address-limit", type=int, default=600)
    parser.add_argument("--window-seconds", type=int, default=10)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(
            args.url,
            args.admin_token,
            joins=args.joins,
            solved=args.solved,
            identity_token=args.identity_token,
            address_limit=args.address_limit,
            window_s=args.window_seconds,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
