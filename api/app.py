"""The Starlette application: `create_app()` builds it; flashsale/wiring.py gives it the services
(uvicorn runs `flashsale.wiring:api_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flashsale.api import admin, health, pages, purchase, shopper
from flashsale.api.errors import EXCEPTION_HANDLERS
from flashsale.api.fastpath import FastPath
from flashsale.api.metrics import MetricsMiddleware
from flashsale.api.openapi import openapi_document
from flashsale.api.request_id import RequestIdMiddleware
from flashsale.config import Settings
from flashsale.waiting_room.services import Services

SALE = "/api/sales/{sale_id}"
ADMIN_SALE = "/admin/sales/{sale_id}"


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.routes))


ROUTES = [
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route(SALE, shopper.sale_info, methods=["GET"]),
    Route(f"{SALE}/join", shopper.join, methods=["POST"]),
    Route(f"{SALE}/status", shopper.status, methods=["GET"]),
    Route(f"{SALE}/leave", shopper.leave, methods=["POST"]),
    Route(f"{SALE}/seats", purchase.seats, methods=["GET"]),
    Route(f"{SALE}/holds", purchase.create_hold, methods=["POST"]),
    Route(f"{SALE}/orders", purchase.list_orders, methods=["GET"]),
    Route(f"{SALE}/orders/{{order_id}}", purchase.get_order, methods=["GET"]),
    Route(f"{SALE}/orders/{{order_id}}/pay", purchase.pay, methods=["POST"]),
    Route(f"{SALE}/orders/{{order_id}}/cancel", purchase.cancel, methods=["POST"]),
    Route("/admin/sales", admin.list_sales, methods=["GET"]),
    Route("/admin/sales", admin.create_sale, methods=["POST"]),
    Route(ADMIN_SALE, admin.get_sale, methods=["GET"]),
    Route(ADMIN_SALE, admin.update_sale, methods=["PATCH"]),
    Route(ADMIN_SALE, admin.put_sale, methods=["PUT"]),
    Route(f"{ADMIN_SALE}/close", admin.close_sale, methods=["POST"]),
    Route(f"{ADMIN_SALE}/prewarm", admin.prewarm, methods=["POST"]),
    Route(f"{ADMIN_SALE}/reconcile", admin.reconcile, methods=["GET", "POST"]),
    # the shopper's pages (api/pages.py) and their static files
    Route("/", pages.landing, methods=["GET"]),
    Route("/sales/{sale_id}", pages.sale_page, methods=["GET"]),
    Route("/static/{name}", pages.static, methods=["GET"]),
]


def create_app(
    settings: Settings,
    open_services: Callable[[], AbstractAsyncContextManager[Services]] | None = None,
) -> Starlette:
    """The app; `open_services` opens what it serves from for as long as it runs (without it,
    the caller sets `app.state.services` itself, as the tests do)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if open_services is None:
            yield
            return
        async with open_services() as services:
            app.state.services = services
            yield

    return Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(FastPath),
            Middleware(RequestIdMiddleware, access_log=settings.access_log),
            Middleware(MetricsMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
