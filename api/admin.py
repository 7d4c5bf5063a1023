"""Admin endpoints (bearer token): create, change, list and close sales, and watch a room."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from flashsale.api.errors import ApiError
from flashsale.api.front import Reply, endpoint, json_reply
from flashsale.api.inputs import Incoming
from flashsale.waiting_room.room import NoSuchRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.stock import NotDrained


def _services(req: Incoming) -> Services:
    req.require_admin()
    return req.services


async def _sale_body(req: Incoming) -> dict[str, Any]:
    """A sale's JSON body; its fields are the core's to check (sale.py)."""
    return await req.json_object(req.services.settings.max_admin_body_bytes, None, required=True)


async def _detail(services: Services, sale: Sale) -> dict[str, Any]:
    body = sale.admin(datetime.now(UTC))
    try:
        body["room"] = asdict(await services.room.counters(sale.id))
    except NoSuchRoom:
        body["room"] = None
    return body


@endpoint(query=("include_closed",))
async def list_sales(req: Incoming) -> Reply:
    services = _services(req)
    include_closed = req.query_bool("include_closed", True)
    now = datetime.now(UTC)
    sales = await services.sales.list(include_closed=include_closed)
    return json_reply({"sales": [sale.admin(now) for sale in sales]})


@endpoint()
async def create_sale(req: Incoming) -> Reply:
    services = _services(req)
    body = await _sale_body(req)
    sale = await services.sales.create(body)
    services.forget(sale.id)
    return json_reply(await _detail(services, sale), 201, {"Location": f"/admin/sales/{sale.id}"})


@endpoint()
async def get_sale(req: Incoming) -> Reply:
    services = _services(req)
    sale = await services.sales.get(req.sale_id)
    return json_reply(await _detail(services, sale))


@endpoint()
async def update_sale(req: Incoming) -> Reply:
    services = _services(req)
    sale_id = req.sale_id
    body = await _sale_body(req)
    sale = await services.sales.update(sale_id, body)
    services.forget(sale_id)
    return json_reply(await _detail(services, sale))


@endpoint()
async def put_sale(req: Incoming) -> Reply:
    services = _services(req)
    sale_id = req.sale_id
    body = await _sale_body(req)
    sale, created = await services.sales.apply(sale_id, body)
    services.forget(sale_id)
    return json_reply(await _detail(services, sale), 201 if created else 200)


@endpoint()
async def close_sale(req: Incoming) -> Reply:
    services = _services(req)
    sale_id = req.sale_id
    await req.json_object(services.settings.max_body_bytes)  # none, or {}
    sale = await services.sales.close(sale_id)
    services.forget(sale_id)
    return json_reply(await _detail(services, sale))


@endpoint(query=("force",))
async def prewarm(req: Incoming) -> Reply:
    """Load the sale's stock into Redis now (fenced: refused once warm unless force)."""
    services = _services(req)
    sale = await services.sales.get(req.sale_id)
    force = req.query_bool("force", False)
    await req.json_object(services.settings.max_body_bytes)  # none, or {}
    result = await services.stock.prewarm(sale, force=force)
    return json_reply(result, 200 if result["outcome"] == "ok" else 409)


@endpoint(query=("repair", "force"))
async def reconcile(req: Incoming) -> Reply:
    """Compare Redis with PostgreSQL; POST with repair=true rebuilds Redis from PostgreSQL."""
    services = _services(req)
    sale = await services.sales.get(req.sale_id)
    post = req.scope["method"] == "POST"
    if not post and req.query("repair") is not None:
        raise ApiError(400, "repair is for POST; GET only checks", field="repair")
    repair = post and req.query_bool("repair", False)
    force = req.query_bool("force", False)
    if post:
        await req.json_object(services.settings.max_body_bytes)  # none, or {}
    try:
        report = await services.stock.reconcile(sale, repair=repair, force=force)
    except NotDrained as exc:
        raise ApiError(409, str(exc), code="not_drained", headers={"Retry-After": "2"}) from exc
    return json_reply(report.as_dict())
