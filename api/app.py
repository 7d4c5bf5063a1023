"""The Starlette application: `create_app()` builds it (uvicorn calls it as a factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import admin, health, pages, purchase, shopper
from api.errors import EXCEPTION_HANDLERS
from api.fastpath import FastPath
from api.metrics import MetricsMiddleware
from api.openapi import openapi_document
from api.request_id import RequestIdMiddleware
from api.services import Services
from flashsale.logs import setup_logging
from flashsale.settings import Settings
from waiting_room.autopipeline import close_shared
from waiting_room.db import connect_pool
from waiting_room.redis_client import connect_redis

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


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect_redis(settings)
        raw_redis = connect_redis(settings, decode=False)
        pool = await connect_pool(settings)
        app.state.services = Services.build(settings, redis, raw_redis, pool)
        try:
            yield
        finally:
            await close_shared()
            await pool.close()
            await redis.aclose()
            await raw_redis.aclose()

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


def factory() -> Starlette:
    """Entry point for `uvicorn --factory api.app:factory`: settings and logs from the env."""
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_json)
    return create_app(settings)
