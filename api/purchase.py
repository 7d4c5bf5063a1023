"""Purchase endpoints: hold with an admission token, pay, cancel, list orders, see seats."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flashsale.api.answer import Answer
from flashsale.api.errors import ApiError
from flashsale.api.inputs import bearer_token, read_json, sale_id_from_path, visitor_of
from flashsale.api.metrics import HOLDS, PAYMENTS, labelled
from flashsale.waiting_room.purchase import PurchaseRefused, layout_of
from flashsale.waiting_room.redis_client import binary
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.seating import taken_from_bitmap
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import ADMISSION, Claims, TokenExpired

NO_STORE = {"Cache-Control": "no-store"}
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _replay_after_expiry(request: Request, services: Services, sale_id: str) -> Answer | None:
    key = request.headers.get("idempotency-key")
    if key is None or not IDEMPOTENCY_KEY.match(key):
        return None
    claims = _admission(request, services, sale_id, expired_ok=True)
    body = await read_json(request, services.settings.max_body_bytes, required=False) or {}
    sale, quantity, seats = await _hold_request(services, sale_id, body)
    order = await services.purchases.replayed(
        sale, claims.visitor, key, quantity=quantity, seats=seats
    )
    if order is None:
        return None
    labelled(HOLDS, "replayed").inc()
    return _held_answer(sale_id, order, created=False)


def _held_answer(sale_id: str, order: dict[str, Any], *, created: bool) -> Answer:
    return Answer(
        201 if created else 200,
        order,
        {**NO_STORE, "Location": f"/api/sales/{sale_id}/orders/{order['id']}"},
    )


def _admission(
    request: Request, services: Services, sale_id: str, *, expired_ok: bool = False
) -> Claims:
    token = bearer_token(
        request.headers.get("authorization"), request.headers.get("x-admission-token")
    )
    if not token:
        raise ApiError(
            401,
            "an admission token is required: send the token from your status "
            "as 'Authorization: Bearer <token>'",
            code="missing_admission",
        )
    claims = services.signer.verify(
        token, kind=ADMISSION, sale=sale_id, now=time.time(), expired_ok=expired_ok
    )
    presented = visitor_of(request)
    if presented is not None and presented != claims.visitor:
        raise ApiError(401, "this admission belongs to another visitor", code="invalid_token")
    return claims


def _visitor(request: Request) -> str:
    visitor = visitor_of(request)
    if visitor is None:
        raise ApiError(
            401,
            "identify yourself with the X-Visitor-Id header or the fs_vid cookie from join",
            code="missing_visitor",
        )
    return visitor


def _seat_ids(sale: Sale, raw: Any) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(422, "seats must be a non-empty list", field="seats")
    layout = layout_of(sale)
    ids = []
    for i, item in enumerate(raw):
        if isinstance(item, int) and not isinstance(item, bool):
            ids.append(item)
        elif isinstance(item, dict) and {"section", "row", "seat"} <= set(item):
            found = layout.find(str(item["section"]), str(item["row"]), str(item["seat"]))
            if found is None:
                raise ApiError(422, "no such seat in this venue", field=f"seats[{i}]")
            ids.append(found)
        else:
            raise ApiError(422, "each seat is an id or {section, row, seat}", field=f"seats[{i}]")
    return ids


async def create_hold(request: Request) -> Response:
    services = _services(request)
    sale_id = sale_id_from_path(request)
    try:
        admission = _admission(request, services, sale_id)
    except TokenExpired:
        # a retry of a hold made before the admission ended gets that hold back
        replay = await _replay_after_expiry(request, services, sale_id)
        if replay is None:
            raise
        return replay.response()
    key = idempotency_key(request.headers.get("idempotency-key"))
    body = await read_json(request, services.settings.max_body_bytes, required=False) or {}
    answer = await hold_answer(services, sale_id, admission, key, body)
    return answer.response()


def idempotency_key(raw: str | None) -> str | None:
    if raw is not None and not IDEMPOTENCY_KEY.match(raw):
        raise ApiError(
            400, "Idempotency-Key must be 1-200 visible ASCII characters", field="Idempotency-Key"
        )
    return raw


async def hold_answer(
    services: Services, sale_id: str, admission: Claims, key: str | None, body: Any
) -> Answer:
    """Hold stock for an admitted shopper; `key` is a checked Idempotency-Key, `body` the
    request's parsed JSON ({} if none)."""
    sale, quantity, seats = await _hold_request(services, sale_id, body)
    held = await services.purchases.hold(
        sale, admission, quantity=quantity, seats=seats, idempotency_key=key
    )
    labelled(HOLDS, "created" if held.created else "replayed").inc()
    return _held_answer(sale_id, held.order, created=held.created)


async def _hold_request(
    services: Services, sale_id: str, body: Any
) -> tuple[Sale, int, list[int] | None]:
    """The sale, quantity and seat ids a hold's body asks for (its Idempotency-Key is bound
    to them, so a replay reads them the same way)."""
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", field="body")
    unknown = sorted(set(body) - {"quantity", "seats"})
    if unknown:
        raise ApiError(422, "unknown field; allowed: quantity, seats", field=unknown[0])
    sale = await services.sale_cached(sale_id)
    quantity = body.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100:
        raise ApiError(422, "quantity must be a whole number from 1 to 100", field="quantity")
    seats = _seat_ids(sale, body["seats"]) if "seats" in body else None
    return sale, quantity, seats


async def list_orders(request: Request) -> Response:
    services = _services(request)
    sale = await services.sale_cached(sale_id_from_path(request))
    orders = await services.purchases.orders(sale, _visitor(request))
    return JSONResponse({"orders": orders}, headers=NO_STORE)


async def get_order(request: Request) -> Response:
    services = _services(request)
    sale = await services.sale_cached(sale_id_from_path(request))
    order = await services.purchases.order(sale, _visitor(request), request.path_params["order_id"])
    return JSONResponse(order, headers=NO_STORE)


async def pay(request: Request) -> Response:
    services = _services(request)
    sale = await services.sale_cached(sale_id_from_path(request))
    visitor = _visitor(request)
    body = await read_json(request, services.settings.max_body_bytes, required=False) or {}
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", field="body")
    token = body.get("payment_token", "tok_approve")
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise ApiError(422, "payment_token must be a string", field="payment_token")
    try:
        order = await services.purchases.pay(sale, visitor, request.path_params["order_id"], token)
    except PurchaseRefused as refused:
        labelled(PAYMENTS, refused.code).inc()
        raise
    labelled(PAYMENTS, "confirmed").inc()
    return JSONResponse(order, headers=NO_STORE)


async def cancel(request: Request) -> Response:
    services = _services(request)
    sale = await services.sale_cached(sale_id_from_path(request))
    order = await services.purchases.cancel(
        sale, _visitor(request), request.path_params["order_id"]
    )
    return JSONResponse(order, headers=NO_STORE)


async def seats(request: Request) -> Response:
    """The venue and which seats are free, for a seat picker."""
    services = _services(request)
    sale = await services.sale_cached(sale_id_from_path(request))
    if not sale.seated:
        raise ApiError(404, "this sale sells quantities, not seats", code="not_seated")
    layout = layout_of(sale)
    bitmap = binary(await services.raw_redis.get(services.room.keys(sale.id).seats))
    taken = taken_from_bitmap(bitmap, layout.size)
    sections: dict[str, list[dict[str, Any]]] = {}
    for row in layout.rows:
        sections.setdefault(row.section, []).append(
            {
                "name": row.name,
                "seats": [
                    {"id": s, "seat": row.labels[s - row.first], "free": s not in taken}
                    for s in row.seats
                ],
            }
        )
    return JSONResponse(
        {
            "sale": sale.id,
            "free": layout.size - len(taken),
            "total": layout.size,
            "sections": [{"name": name, "rows": rows} for name, rows in sections.items()],
        },
        headers={"Cache-Control": "public, max-age=1"},
    )
