"""Shopper endpoints: see a sale, join its waiting room, poll your place, leave."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flashsale.api import identity
from flashsale.api.answer import Answer, visitor_cookie
from flashsale.api.errors import ApiError
from flashsale.api.inputs import (
    VISITOR_COOKIE,
    client_address,
    int_query,
    new_visitor_id,
    read_json,
    sale_id_from_path,
    ticket_of,
    visitor_of,
)
from flashsale.api.metrics import JOINS, POLLS, labelled
from flashsale.waiting_room.room import NoSuchRoom, Poll
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import TICKET, Claims

T = TypeVar("T")
NO_STORE = {"Cache-Control": "no-store"}


async def with_room(services: Services, sale_id: str, action: Callable[[], Awaitable[T]]) -> T:
    """Run a room action; if Redis has no room for the sale, install it from PostgreSQL
    (an unknown sale answers 404) and try once more."""
    try:
        return await action()
    except NoSuchRoom:
        await services.ensure_room(sale_id)
        return await action()


def status_body(sale_id: str, poll: Poll) -> dict[str, Any]:
    status = poll.status
    body: dict[str, Any] = {
        "sale": sale_id,
        "state": status.state.value,
        "position": status.position,
        "ahead": status.ahead,
        "waiting": status.waiting,
        "estimated_wait_seconds": status.eta_seconds,
        "poll_after_seconds": status.poll_after_seconds,
        "heartbeat": poll.heartbeat,
        "message": status.message,
    }
    if poll.admission_token and status.admitted_until_ms is not None:
        body["admission_token"] = poll.admission_token
        body["admitted_until"] = datetime.fromtimestamp(
            status.admitted_until_ms / 1000, UTC
        ).isoformat()
    return body


async def sale_info(request: Request) -> Response:
    services: Services = request.app.state.services
    sale_id = sale_id_from_path(request)
    sale = await services.sale_cached(sale_id)
    body = sale.public(datetime.now(UTC))
    try:
        view = await services.room.view(sale_id)
        body["waiting"] = view.waiting
        body["sold_out"] = view.sold_out
    except NoSuchRoom:
        body["waiting"] = 0
        body["sold_out"] = False
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=1"})


async def join(request: Request) -> Response:
    services: Services = request.app.state.services
    sale_id = sale_id_from_path(request)
    body = await read_json(request, services.settings.max_body_bytes, required=False)
    if body is not None and not isinstance(body, dict):
        raise ApiError(422, "the body, when given, must be a JSON object", field="body")
    answer = await join_answer(
        services,
        sale_id,
        visitor_of(request),
        request.cookies.get(VISITOR_COOKIE),
        client_address(request),
        authorization=request.headers.get("authorization"),  # identity-pow
        proof=request.headers.get(identity.PROOF_HEADER),  # identity-pow
    )
    return answer.response()


async def join_answer(
    services: Services,
    sale_id: str,
    presented: str | None,
    cookie: str | None,
    address: str,
    *,
    authorization: str | None = None,
    proof: str | None = None,
) -> Answer:
    """Join `sale_id` as the visitor presented (checked), or as a new one; `cookie` is the
    visitor cookie the caller sent, reset when it is not the visitor's. `authorization` and
    `proof` are the join's identity and proof of work (api/identity.py)."""
    # identity-pow: who may take a place (the identity's visitor id, a proof of work)
    passed = await with_room(
        services,
        sale_id,
        lambda: identity.check_join(services, sale_id, presented, address, authorization, proof),
    )
    visitor = passed.visitor or presented or new_visitor_id()
    result = await with_room(
        services, sale_id, lambda: services.room.join(sale_id, visitor, address, passed.proof)
    )
    labelled(JOINS, "existing" if result.existing else result.outcome).inc()
    if result.outcome in ("proof_required", "proof_spent"):  # identity-pow
        raise await identity.refused_join(services, sale_id, presented, address, result.outcome)
    if result.outcome == "rate_limited":
        retry = math.ceil(result.retry_after_seconds or 1)
        raise ApiError(
            429, f"too many joins; try again in {retry} s", headers={"Retry-After": str(retry)}
        )
    if result.outcome in ("closed", "sold_out"):
        message = (
            "the sale has closed" if result.outcome == "closed" else "everything has been sold"
        )
        raise ApiError(409, message, code=result.outcome, extra={"state": result.outcome})
    assert result.claims is not None
    poll = await services.room.poll(sale_id, result.claims, result.heartbeat)
    body = status_body(sale_id, poll)
    body.update(visitor_id=visitor, ticket=result.ticket, existing=result.existing)
    set_cookie = None
    if presented is None or cookie != visitor:
        set_cookie = visitor_cookie(visitor, services.settings.cookie_secure)
    return Answer(200 if result.existing else 201, body, NO_STORE, set_cookie)


def _ticket_claims(request: Request, services: Services, sale_id: str) -> Claims:
    claims = services.signer.verify(ticket_of(request), kind=TICKET, sale=sale_id, now=time.time())
    presented = visitor_of(request)
    if presented is not None and presented != claims.visitor:
        raise ApiError(401, "this ticket belongs to another visitor", code="invalid_token")
    return claims


async def status(request: Request) -> Response:
    services: Services = request.app.state.services
    sale_id = sale_id_from_path(request)
    claims = _ticket_claims(request, services, sale_id)
    heartbeat = int_query(request, "hb")
    poll = await with_room(
        services, sale_id, lambda: services.room.poll(sale_id, claims, heartbeat)
    )
    labelled(POLLS, poll.status.state.value).inc()
    return JSONResponse(status_body(sale_id, poll), headers=NO_STORE)


async def leave(request: Request) -> Response:
    services: Services = request.app.state.services
    sale_id = sale_id_from_path(request)
    claims = _ticket_claims(request, services, sale_id)
    await with_room(services, sale_id, lambda: services.room.leave(sale_id, claims))
    return JSONResponse({"sale": sale_id, "state": "left"}, headers=NO_STORE)
