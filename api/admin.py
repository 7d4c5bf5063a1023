"""Admin endpoints (bearer token): create, change, list and close sales, and watch a room."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flashsale.api.errors import ApiError
from flashsale.api.inputs import bool_query, read_json, require_admin, sale_id_from_path
from flashsale.waiting_room.room import NoSuchRoom
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.stock import NotDrained


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    require_admin(request, services.settings.admin_token)
    return services


async def _detail(services: Services, sale: Sale) -> dict[str, Any]:
    body = sale.admin(datetime.now(UTC))
    try:
        body["room"] = asdict(await services.room.counters(sale.id))
    except NoSuchRoom:
        body["room"] = None
    return body


async def list_sales(request: Request) -> Response:
    services = _services(request)
    include_closed = bool_query(request, "include_closed", True)
    now = datetime.now(UTC)
    sales = await services.sales.list(include_closed=include_closed)
    return JSONResponse({"sales": [sale.admin(now) for sale in sales]})


async def create_sale(request: Request) -> Response:
    services = _services(request)
    body = await read_json(request, services.settings.max_admin_body_bytes)
    sale = await services.sales.create(body)
    services.forget(sale.id)
    return JSONResponse(
        await _detail(services, sale),
        status_code=201,
        headers={"Location": f"/admin/sales/{sale.id}"},
    )


async def get_sale(request: Request) -> Response:
    services = _services(request)
    sale = await services.sales.get(sale_id_from_path(request))
    return JSONResponse(await _detail(services, sale))


async def update_sale(request: Request) -> Response:
    services = _services(request)
    sale_id = sale_id_from_path(request)
    body = await read_json(request, services.settings.max_admin_body_bytes)
    sale = await services.sales.update(sale_id, body)
    services.forget(sale_id)
    return JSONResponse(await _detail(services, sale))


async def put_sale(request: Request) -> Response:
    services = _services(request)
    sale_id = sale_id_from_path(request)
    body = await read_json(request, services.settings.max_admin_body_bytes)
    sale, created = await services.sales.apply(sale_id, body)
    services.forget(sale_id)
    return JSONResponse(await _detail(services, sale), status_code=201 if created else 200)


async def close_sale(request: Request) -> Response:
    services = _services(request)
    sale_id = sale_id_from_path(request)
    sale = await services.sales.close(sale_id)
    services.forget(sale_id)
    return JSONResponse(await _detail(services, sale))


async def prewarm(request: Request) -> Response:
    """Load the sale's stock into Redis now (fenced: refused once warm unless force)."""
    services = _services(request)
    sale = await services.sales.get(sale_id_from_path(request))
    result = await services.stock.prewarm(sale, force=bool_query(request, "force", False))
    return JSONResponse(result, status_code=200 if result["outcome"] == "ok" else 409)


async def reconcile(request: Request) -> Response:
    """Compare Redis with PostgreSQL; POST with repair=true rebuilds Redis from PostgreSQL."""
    services = _services(request)
    sale = await services.sales.get(sale_id_from_path(request))
    repair = request.method == "POST" and bool_query(request, "repair", False)
    try:
        report = await services.stock.reconcile(
            sale, repair=repair, force=bool_query(request, "force", False)
        )
    except NotDrained as exc:
        raise ApiError(409, str(exc), code="not_drained", headers={"Retry-After": "2"}) from exc
    return JSONResponse(report.as_dict())
