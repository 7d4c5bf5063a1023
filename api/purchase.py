"""Purchase endpoints: hold with an admission token, pay, cancel, list orders, see seats."""

from __future__ import annotations

import time
from typing import Any

from flashsale.api.errors import ApiError
from flashsale.api.front import Reply, encode_headers, endpoint, json_reply
from flashsale.api.inputs import Incoming
from flashsale.api.metrics import HOLDS, PAYMENTS, labelled
from flashsale.waiting_room.purchase import PurchaseRefused, layout_of
from flashsale.waiting_room.redis_client import binary
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.seating import taken_from_bitmap
from flashsale.waiting_room.tokens import ADMISSION, Claims, TokenExpired

NO_STORE = encode_headers({"Cache-Control": "no-store"})
HOLD_FIELDS = frozenset({"quantity", "seats"})
PAY_FIELDS = frozenset({"payment_token"})


def _held(sale_id: str, order: dict[str, Any], *, created: bool) -> Reply:
    return json_reply(
        order,
        201 if created else 200,
        [*NO_STORE, (b"location", f"/api/sales/{sale_id}/orders/{order['id']}".encode())],
    )


def _admission(req: Incoming, sale_id: str, *, expired_ok: bool = False) -> Claims:
    claims = req.services.signer.verify(
        req.admission_token(), kind=ADMISSION, sale=sale_id, now=time.time(), expired_ok=expired_ok
    )
    presented = req.visitor()
    if presented is not None and presented != claims.visitor:
        raise ApiError(401, "this admission belongs to another visitor", code="invalid_token")
    return claims


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


async def _hold_request(req: Incoming) -> tuple[Sale, int, list[int] | None]:
    """The sale, quantity and seat ids a hold's body asks for: read the same way for a hold
    and for its replay, since the Idempotency-Key is bound to them."""
    services = req.services
    body = await req.json_object(services.settings.max_body_bytes, HOLD_FIELDS)
    sale = await services.sale_cached(req.sale_id)
    quantity = body.get("quantity", 1)
    if type(quantity) is not int or not 1 <= quantity <= 100:
        raise ApiError(422, "quantity must be a whole number from 1 to 100", field="quantity")
    seats = _seat_ids(sale, body["seats"]) if "seats" in body else None
    return sale, quantity, seats


@endpoint()
async def create_hold(req: Incoming) -> Reply:
    """Hold stock for an admitted shopper. A retry (same Idempotency-Key, same request) of a
    hold made before the admission ended gets that hold back."""
    services = req.services
    sale_id = req.sale_id
    try:
        admission = _admission(req, sale_id)
    except TokenExpired:
        try:
            key = req.idempotency_key()
        except ApiError:
            key = None
        if key is None:  # only a retry, under its key, gets anything after the admission
            raise
        claims = _admission(req, sale_id, expired_ok=True)
        sale, quantity, seats = await _hold_request(req)
        order = await services.purchases.replayed(
            sale, claims.visitor, key, quantity=quantity, seats=seats
        )
        if order is None:
            raise
        labelled(HOLDS, "replayed").inc()
        return _held(sale_id, order, created=False)
    key = req.idempotency_key()
    sale, quantity, seats = await _hold_request(req)
    held = await services.purchases.hold(
        sale, admission, quantity=quantity, seats=seats, idempotency_key=key
    )
    labelled(HOLDS, "created" if held.created else "replayed").inc()
    return _held(sale_id, held.order, created=held.created)


@endpoint()
async def list_orders(req: Incoming) -> Reply:
    services = req.services
    sale = await services.sale_cached(req.sale_id)
    orders = await services.purchases.orders(sale, req.known_visitor())
    return json_reply({"orders": orders}, headers=NO_STORE)


@endpoint()
async def get_order(req: Incoming) -> Reply:
    services = req.services
    sale = await services.sale_cached(req.sale_id)
    order = await services.purchases.order(sale, req.known_visitor(), req.order_id)
    return json_reply(order, headers=NO_STORE)


@endpoint()
async def pay(req: Incoming) -> Reply:
    services = req.services
    sale = await services.sale_cached(req.sale_id)
    visitor = req.known_visitor()
    order_id = req.order_id
    body = await req.json_object(services.settings.max_body_bytes, PAY_FIELDS)
    token = body.get("payment_token", "tok_approve")
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise ApiError(
            422, "payment_token must be a string of 1-200 characters", field="payment_token"
        )
    try:
        order = await services.purchases.pay(sale, visitor, order_id, token)
    except PurchaseRefused as refused:
        labelled(PAYMENTS, refused.code).inc()
        raise
    labelled(PAYMENTS, "confirmed").inc()
    return json_reply(order, headers=NO_STORE)


@endpoint()
async def cancel(req: Incoming) -> Reply:
    services = req.services
    sale = await services.sale_cached(req.sale_id)
    visitor = req.known_visitor()
    order_id = req.order_id
    await req.json_object(services.settings.max_body_bytes)  # none, or {}
    order = await services.purchases.cancel(sale, visitor, order_id)
    return json_reply(order, headers=NO_STORE)


@endpoint()
async def seats(req: Incoming) -> Reply:
    """The venue and which seats are free, for a seat picker."""
    services = req.services
    sale = await services.sale_cached(req.sale_id)
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
    return json_reply(
        {
            "sale": sale.id,
            "free": layout.size - len(taken),
            "total": layout.size,
            "sections": [{"name": name, "rows": rows} for name, rows in sections.items()],
        },
        headers={"Cache-Control": "public, max-age=1"},
    )
