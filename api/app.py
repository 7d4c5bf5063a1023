"""The application: `create_app()` builds it; flashsale/wiring.py gives it the services
(the HTTP server runs `flashsale.wiring:api_app`).

One router holds every route; the three a crowd calls (status, join, holds) come first, as
Starlette's router tries the routes in order. Every request passes the front door
(api/front.py) on its way in and out.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route

from flashsale.api import admin, health, pages, purchase, shopper
from flashsale.api.front import App, Reply, endpoint, json_reply
from flashsale.api.inputs import Incoming, proxies
from flashsale.api.openapi import openapi_document
from flashsale.config import Settings
from flashsale.waiting_room.services import Services

SALE = "/api/sales/{sale_id}"
ADMIN_SALE = "/admin/sales/{sale_id}"


@endpoint()
async def openapi(req: Incoming) -> Reply:
    return json_reply(openapi_document(req.scope["app"].routes))


ROUTES = [
    # the hot three first: the router tries routes in this order
    Route(f"{SALE}/status", shopper.status, methods=["GET"]),
    Route(f"{SALE}/join", shopper.join, methods=["POST"]),
    Route(f"{SALE}/holds", purchase.create_hold, methods=["POST"]),
    Route(SALE, shopper.sale_info, methods=["GET"]),
    Route(f"{SALE}/leave", shopper.leave, methods=["POST"]),
    Route(f"{SALE}/seats", purchase.seats, methods=["GET"]),
    Route(f"{SALE}/orders", purchase.list_orders, methods=["GET"]),
    Route(f"{SALE}/orders/{{order_id}}", purchase.get_order, methods=["GET"]),
    Route(f"{SALE}/orders/{{order_id}}/pay", purchase.pay, methods=["POST"]),
    Route(f"{SALE}/orders/{{order_id}}/cancel", purchase.cancel, methods=["POST"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
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


# gen0 collections once per this many new container objects instead of 700
# (docs/performance.md: the collector's share of a request, 4-5 µs, falls under 1 µs)
YOUNG_GENERATION = 10_000


def settle_heap() -> None:
    """Once the process has started: what startup made (modules, the app, the connections)
    lives as long as the process, so it leaves the collector's sight (`gc.freeze`) and a full
    collection no longer walks it; and the youngest generation is collected every
    YOUNG_GENERATION allocations, not every 700 (each request allocates a few hundred short-
    lived objects, nearly none of them in a cycle). Measured under `make bench`'s load."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)


def create_app(
    settings: Settings,
    open_services: Callable[[], AbstractAsyncContextManager[Services]] | None = None,
) -> Starlette:
    """The app; `open_services` opens what it serves from for as long as it runs (without it,
    the caller sets `app.state.services` itself, as the tests do)."""
    proxies(settings.forwarded_allow_ips)  # a bad FLASHSALE_FORWARDED_ALLOW_IPS fails here

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if open_services is None:
            yield
            return
        async with open_services() as services:
            app.state.services = services
            settle_heap()
            yield

    return App(ROUTES, lifespan=lifespan, access_log=settings.access_log)
