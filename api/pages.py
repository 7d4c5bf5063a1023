"""The shopper's pages: a list of sales at `/`, and one page per sale at `/sales/{sale_id}`
(the waiting room, then the purchase, in one page that switches views).

The pages are static HTML and JavaScript from `api/static/` (no build step, nothing from
another origin) and talk to the JSON API like any other client. Every page answer carries a
strict Content-Security-Policy (no inline script or style), `nosniff` and a Referrer-Policy;
static files are named with a `?v=` content hash, so they can be cached for long.
"""

from __future__ import annotations

import hashlib
import html
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from flashsale.api.errors import ApiError
from flashsale.api.front import Reply, encode_headers, endpoint
from flashsale.api.inputs import Incoming, sale_id
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.sales import SaleNotFound

STATIC_DIR = Path(__file__).with_name("static")
TEMPLATES = STATIC_DIR / "html"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'self'; script-src 'self'; worker-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# HTML is revalidated on every visit, so a new deployment's hashed asset names are seen at once
PAGE_CACHE = "no-cache"
# an asset asked for with its current hash never changes; without it, keep it briefly
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
LANDING_TTL_S = 2.0
LANDING_LIMIT = 50


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """The servable static files (top level of `api/static/`), read once per process."""
    found = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            body = path.read_bytes()
            found[path.name] = Asset(
                body, CONTENT_TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            )
    return found


@cache
def version() -> str:
    """One hash over every asset: the `?v=` the pages put on their script and style URLs."""
    digest = hashlib.sha256()
    for name, asset in assets().items():
        digest.update(name.encode() + b"\0" + asset.body)
    return digest.hexdigest()[:12]


@cache
def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8").replace("{{version}}", version())


PAGE_HEADERS = [
    *encode_headers({**SECURITY_HEADERS, "Cache-Control": PAGE_CACHE}),
    (b"content-type", b"text/html; charset=utf-8"),
]


def page(body: str, status: int = 200) -> Reply:
    return Reply(status, body.encode(), PAGE_HEADERS)


def _opens_text(sale: Sale) -> str:
    """The opening in the sale's own time zone, for readers without JavaScript (the page
    script rewrites it in the visitor's language)."""
    local = sale.opens_at.astimezone(ZoneInfo(sale.timezone))
    return f"{local:%Y-%m-%d %H:%M} ({sale.timezone})"


def _sale_item(sale: Sale, now: datetime) -> str:
    esc = html.escape
    phase = sale.phase(now)
    badge = (
        '<span class="badge badge-open" data-i18n="phase_open">Open now</span>'
        if phase == "open"
        else '<span class="badge" data-i18n="phase_scheduled">Coming soon</span>'
    )
    return (
        f'<li class="sale-card">'
        f'<h2><a href="/sales/{esc(sale.id)}">{esc(sale.name)}</a></h2>'
        f'<p>{badge} <span data-i18n="opens_label">Opens</span> '
        f'<time datetime="{esc(sale.opens_at.isoformat())}" data-tz="{esc(sale.timezone)}">'
        f"{esc(_opens_text(sale))}</time></p>"
        f'<p><a class="button" href="/sales/{esc(sale.id)}" data-i18n="enter_sale">'
        f"Enter the waiting room</a></p>"
        f"</li>"
    )


async def _live_sales(req: Incoming) -> list[Sale]:
    """Sales not closed, soonest first; read from PostgreSQL at most every LANDING_TTL_S per
    process (the landing page is what a crowd reloads)."""
    state = req.scope["app"].state
    cached = getattr(state, "landing_sales", None)
    if cached is not None and time.monotonic() - cached[0] < LANDING_TTL_S:
        return list(cached[1])
    sales = (await req.services.sales.list(include_closed=False))[:LANDING_LIMIT]
    state.landing_sales = (time.monotonic(), sales)
    return sales


@endpoint(query=None)
async def landing(req: Incoming) -> Reply:
    now = datetime.now(UTC)
    sales = await _live_sales(req)
    if sales:
        items = "\n".join(_sale_item(s, now) for s in sales)
        listing = f'<ul class="sales" aria-labelledby="sales-title">\n{items}\n</ul>'
    else:
        listing = (
            '<p class="card" data-i18n="no_sales">No sales are open or coming up right '
            "now. Come back soon!</p>"
        )
    return page(template("landing.html").replace("<!--sales-->", listing))


@endpoint(query=None)
async def sale_page(req: Incoming) -> Reply:
    """The waiting room and purchase page; the script reads the sale id from the path.

    An unknown sale is a 404 like on every route naming a sale: an HTML page for a browser,
    the usual JSON error (`unknown_sale`) for any other client."""
    try:
        await req.services.sale_cached(sale_id(req.path("sale_id")))
    except (SaleNotFound, ApiError):
        if "text/html" in (req.header(b"accept") or ""):
            return page(template("not-found.html"), status=404)
        raise
    return page(template("sale.html"))


@endpoint(query=None)
async def static(req: Incoming) -> Reply:
    asset = assets().get(req.path("name"))
    if asset is None:
        raise ApiError(404, "no such file", code="not_found")
    fresh = req.query("v") == version()
    headers = {
        "Cache-Control": IMMUTABLE if fresh else SHORT,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CSP,
        "Referrer-Policy": "no-referrer",
    }
    if asset.etag in (req.header(b"if-none-match") or ""):
        return Reply(304, b"", encode_headers(headers))
    return Reply(
        200, asset.body, [*encode_headers(headers), (b"content-type", asset.content_type.encode())]
    )


_HTML = {"text/html": {"schema": {"type": "string"}}}
_NOT_FOUND_JSON: dict[str, Any] = {
    "description": "No such file",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}

# The pages' entries in /openapi.json (api/openapi.py adds them to its own)
OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/": {
        "get": {
            "summary": "Shopper page: the sales open now or coming up (HTML)",
            "responses": {"200": {"description": "The landing page", "content": _HTML}},
        }
    },
    "/sales/{sale_id}": {
        "get": {
            "summary": "Shopper page: a sale's waiting room, then its purchase (HTML)",
            "description": "A static page whose script joins the waiting room, polls the status, "
            "and once admitted holds, pays and shows the orders through the JSON "
            "API. Reloading it keeps the place (the fs_vid cookie).",
            "parameters": [
                {"name": "sale_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The page", "content": _HTML},
                "404": {
                    "description": "Unknown sale: an HTML page when the client "
                    "accepts text/html, else the JSON error",
                    "content": {**_HTML, **_NOT_FOUND_JSON["content"]},
                },
            },
        }
    },
    "/static/{name}": {
        "get": {
            "summary": "The pages' scripts, style sheet and icon",
            "description": "Asked for with `?v=<hash>` as the pages do, an asset is cacheable "
            "for a year; otherwise for five minutes.",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "v", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The file",
                    "content": {"text/javascript": {}, "text/css": {}, "image/svg+xml": {}},
                },
                "304": {"description": "Not modified (If-None-Match)"},
                "404": _NOT_FOUND_JSON,
            },
        }
    },
}
