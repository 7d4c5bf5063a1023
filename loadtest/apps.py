"""Reference apps the benchmark measures FlashSale against, served by the very same uvicorn
configuration as the API (see `loadtest/serve.py`).

- `bare`: one Starlette endpoint answering a small JSON object; no middleware, no I/O. The
  ceiling of what uvicorn + Starlette serve on this machine: every FlashSale endpoint is
  compared with it.
- `rowlock`: a purchase the way a plain relational shop does it: one transaction that locks
  the sale's counter row (`SELECT ... FOR UPDATE`), decrements it and inserts the order. Every
  purchase of a sale queues on that one row lock, held through the commit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROWLOCK_SCHEMA_ENV = "FLASHSALE_DATABASE_SCHEMA"

ROWLOCK_DDL = """
CREATE TABLE IF NOT EXISTS rowlock_counter (
    sale_id text PRIMARY KEY,
    stock   integer NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS rowlock_orders (
    id         uuid PRIMARY KEY,
    sale_id    text NOT NULL REFERENCES rowlock_counter (sale_id),
    visitor    text NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


async def _hello(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def bare() -> Starlette:
    """uvicorn factory: the bare endpoint, on every path the benchmark uses."""
    return Starlette(routes=[Route("/{path:path}", _hello, methods=["GET", "POST"])])


def rowlock() -> Starlette:
    """uvicorn factory: `POST /rowlock/{sale}/purchase` buys one unit under a row lock."""
    pool: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        schema = os.environ.get(ROWLOCK_SCHEMA_ENV, "public")
        pool.append(
            await asyncpg.create_pool(
                os.environ["DATABASE_URL"],
                min_size=1,
                max_size=10,  # the API's pool size
                server_settings={"search_path": schema},
                command_timeout=30,
            )
        )
        try:
            yield
        finally:
            await pool[0].close()

    async def purchase(request: Request) -> Response:
        sale_id = request.path_params["sale"]
        visitor = request.headers.get("x-visitor-id", "anonymous")
        order_id = uuid.uuid4()
        async with pool[0].acquire() as conn, conn.transaction():
            stock = await conn.fetchval(
                "SELECT stock FROM rowlock_counter WHERE sale_id = $1 FOR UPDATE", sale_id
            )
            if stock is None or stock < 1:
                return JSONResponse({"error": {"code": "sold_out"}}, status_code=409)
            await conn.execute(
                "UPDATE rowlock_counter SET stock = stock - 1 WHERE sale_id = $1", sale_id
            )
            await conn.execute(
                "INSERT INTO rowlock_orders (id, sale_id, visitor, quantity)"
                " VALUES ($1, $2, $3, 1)",
                order_id,
                sale_id,
                visitor,
            )
        return JSONResponse({"id": str(order_id), "status": "confirmed"}, status_code=201)

    return Starlette(
        routes=[Route("/rowlock/{sale}/purchase", purchase, methods=["POST"])], lifespan=lifespan
    )
