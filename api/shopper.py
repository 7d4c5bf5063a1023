"""Shopper endpoints: see a sale, join its waiting room, poll your place, leave."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flashsale.api import identity
from flashsale.api.errors import ApiError
from flashsale.api.front import Reply, encode_headers, endpoint, json_reply
from flashsale.api.inputs import VISITOR_COOKIE, Incoming, new_visitor_id
from flashsale.api.metrics import JOINS, POLLS, labelled
from flashsale.waiting_room.room import NoSuchRoom, Poll
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import TICKET, Claims

T = TypeVar("T")
NO_STORE = encode_headers({"Cache-Control": "no-store"})
VISITOR_COOKIE_MAX_AGE = 30 * 86400


async def with_room(services: Services, sale_id: str, action: Callable[[], Awaitable[T]]) -> T:
    """Run a room action; if Redis has no room for the sale, install it from PostgreSQL
    (an unknown sale answers 404) and try once more."""
    try:
        return await action()
    except NoSuchRoom:
        await services.ensure_room(sale_id)
        return await action()


def visitor_cookie(visitor: str, secure: bool) -> str:
    """The `Set-Cookie` value that keeps a visitor's place; the id is checked (VISITOR_ID)
    before it gets here."""
    cookie = (
        f"{VISITOR_COOKIE}={visitor}; HttpOnly; Max-Age={VISITOR_COOKIE_MAX_AGE}; "
        "Path=/; SameSite=lax"
    )
    return cookie + "; Secure" if secure else cookie


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


@endpoint()
async def sale_info(req: Incoming) -> Reply:
    services = req.services
    sale_id = req.sale_id
    sale = await services.sale_cached(sale_id)
    body = sale.public(datetime.now(UTC))
    try:
        view = await services.room.view(sale_id)
        body["waiting"] = view.waiting
        body["sold_out"] = view.sold_out
    except NoSuchRoom:
        body["waiting"] = 0
        body["sold_out"] = False
    return json_reply(body, headers={"Cache-Control": "public, max-age=1"})


@endpoint()
async def join(req: Incoming) -> Reply:
    """Join as the visitor presented (checked), or as a new one; the visitor cookie is set
    unless the caller already sent this visitor's."""
    services = req.services
    sale_id = req.sale_id
    presented = req.visitor()
    await req.json_object(services.settings.max_body_bytes)  # none, or {}
    address = req.address()
    # who may take a place: the shop's identity (its visitor id), or a proof of work
    authorization, proof = req.header(b"authorization"), req.header(identity.PROOF_HEADER.encode())
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
    if result.outcome in ("proof_required", "proof_spent"):
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
    cookie = ""
    if presented is None or req.cookie(VISITOR_COOKIE) != visitor:
        cookie = visitor_cookie(visitor, services.settings.cookie_secure)
    return json_reply(body, 200 if result.existing else 201, NO_STORE, cookie=cookie)


def _ticket_claims(req: Incoming, sale_id: str) -> Claims:
    claims = req.services.signer.verify(req.ticket(), kind=TICKET, sale=sale_id, now=time.time())
    presented = req.visitor()
    if presented is not None and presented != claims.visitor:
        raise ApiError(401, "this ticket belongs to another visitor", code="invalid_token")
    return claims


@endpoint(query=("hb", "ticket"))
async def status(req: Incoming) -> Reply:
    services = req.services
    sale_id = req.sale_id
    claims = _ticket_claims(req, sale_id)
    heartbeat = req.query_int("hb")
    poll = await with_room(
        services, sale_id, lambda: services.room.poll(sale_id, claims, heartbeat)
    )
    labelled(POLLS, poll.status.state.value).inc()
    return json_reply(status_body(sale_id, poll), headers=NO_STORE)


@endpoint(query=("ticket",))
async def leave(req: Incoming) -> Reply:
    services = req.services
    sale_id = req.sale_id
    claims = _ticket_claims(req, sale_id)
    await req.json_object(services.settings.max_body_bytes)  # none, or {}
    await with_room(services, sale_id, lambda: services.room.leave(sale_id, claims))
    return json_reply({"sale": sale_id, "state": "left"}, headers=NO_STORE)
