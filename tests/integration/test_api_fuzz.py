"""schemathesis against /openapi.json: every operation of the running API (`flashsale api`, two
uvicorn workers, this session's Redis and PostgreSQL) called with inputs generated from the
document, and every answer checked against it: no server error, a documented status, content
type, headers and body. Bounded (a few dozen calls per operation) to stay within a minute or
two.

Half the calls name a real sale and carry valid credentials (the admin token, a ticket, an
admission token, the visitor), so the generated bodies, queries and headers reach the
endpoints' own checks rather than stopping at a 404 or a 401."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flashsale.config import Settings
from flashsale.waiting_room.tokens import ADMISSION, TICKET, Claims, Signer
from tests.integration.test_api_server import serving
from tests.support import ADMIN_TOKEN, sale_body

EXAMPLES = 50


@pytest.fixture(scope="module")
def api_url(settings: Settings, database: None) -> Iterator[str]:
    with serving(settings) as url:
        yield url


@pytest.fixture(scope="module")
def known(api_url: str, settings: Settings) -> dict[str, Any]:
    """A sale open now, a visitor with a ticket and an admission, for the calls that need
    them (the admission is signed here: the fuzz does not wait for the admitter)."""
    signer = Signer(settings.signing_keys())
    body = sale_body(opens_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5)))
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    created = httpx.post(f"{api_url}/admin/sales", json=body, headers=admin)
    assert created.status_code == 201, created.text
    joined = httpx.post(f"{api_url}/api/sales/{body['id']}/join").json()
    visitor = joined["visitor_id"]
    claims = Claims(ADMISSION, body["id"], visitor, 0, time.time() + 600)
    ticket = Claims(TICKET, body["id"], visitor, 0, time.time() + 600)
    return {
        "sale": body["id"],
        "visitor": visitor,
        "ticket": signer.sign(ticket),
        "admission": signer.sign(claims),
    }


def with_known_inputs(case: Any, known: dict[str, Any], rng: random.Random) -> None:
    """Point half the cases at the real sale, with valid credentials."""
    if rng.random() < 0.5:
        return
    if case.path_parameters and "sale_id" in case.path_parameters:
        case.path_parameters["sale_id"] = known["sale"]
    headers = dict(case.headers or {})
    if case.path.startswith("/admin"):
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    elif case.path.endswith("/holds"):
        headers["Authorization"] = f"Bearer {known['admission']}"
    if case.path.endswith(("/status", "/leave")):
        headers["X-Queue-Ticket"] = known["ticket"]
    if "/orders" in case.path or "X-Visitor-Id" in headers:
        headers["X-Visitor-Id"] = known["visitor"]
    case.headers = headers


def fuzz(operation: Any, known: dict[str, Any]) -> None:
    """Call one operation with EXAMPLES generated inputs, checking every answer."""
    rng = random.Random(operation.label)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def check(case: Any) -> None:
        with_known_inputs(case, known, rng)
        # a schema-valid request may still be refused by the sale's own rules (stock, seats,
        # limits: 409/422); every answer must match the document all the same
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()


def test_the_api_answers_as_its_document_says(api_url: str, known: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        try:
            fuzz(operation, known)
            print(f"fuzzed {operation.label}")
        except BaseException as exc:  # hypothesis raises an exception group
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures[operation.label] = str(exc)[:1500]
    assert operations >= 20
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
