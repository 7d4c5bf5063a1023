"""The OpenAPI 3.1 description of every endpoint, served at `/openapi.json`.

Written out rather than generated so request and response bodies are described fully; a test
checks that every route of the app appears here and nothing else does.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from flashsale.api import identity
from flashsale.api.pages import OPENAPI_PATHS as PAGE_PATHS
from flashsale.waiting_room.sale import (
    ADMISSION_BOUNDS,
    DEFAULT_POW_DIFFICULTY,
    POW_DIFFICULTY_BOUNDS,
)

_ref = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref, description)


VISITOR_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}
SALE_ID_PARAM = {
    "name": "sale_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
}
TICKET_PARAMS = [
    {
        "name": "X-Queue-Ticket",
        "in": "header",
        "schema": {"type": "string"},
        "description": "The ticket from join (or the `ticket` query parameter).",
    },
    {"name": "ticket", "in": "query", "schema": {"type": "string"}},
    {
        "name": "X-Visitor-Id",
        "in": "header",
        "schema": VISITOR_SCHEMA,
        "description": "Must match the ticket's visitor when given (or the fs_vid cookie).",
    },
]
ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The input field at fault."},
                },
            }
        },
    },
    "Status": {
        "type": "object",
        "required": ["sale", "state", "waiting", "message"],
        "properties": {
            "sale": {"type": "string"},
            "state": {"enum": ["not_open", "waiting", "admitted", "expired", "sold_out", "closed"]},
            "position": {
                "type": ["integer", "null"],
                "description": "1-based place in line; null before the opening.",
            },
            "ahead": {"type": ["integer", "null"]},
            "waiting": {"type": "integer"},
            "estimated_wait_seconds": {"type": ["number", "null"]},
            "poll_after_seconds": {
                "type": ["number", "null"],
                "description": "Poll again after this long; null: stop.",
            },
            "heartbeat": {
                "type": ["integer", "null"],
                "description": "Echo it as `hb` on the next poll.",
            },
            "message": {"type": "string"},
            "admission_token": {"type": "string"},
            "admitted_until": {"type": "string", "format": "date-time"},
        },
    },
    "Joined": {
        "allOf": [
            {"$ref": "#/components/schemas/Status"},
            {
                "type": "object",
                "required": ["visitor_id", "ticket", "existing"],
                "properties": {
                    "visitor_id": {"type": "string"},
                    "ticket": {"type": "string"},
                    "existing": {"type": "boolean"},
                },
            },
        ]
    },
    "SeatMap": {
        "type": "object",
        "required": ["sections"],
        "properties": {
            "sections": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rows"],
                    "properties": {
                        "name": {"type": "string"},
                        "rows": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "seats"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "seats": {
                                        "oneOf": [
                                            {"type": "integer", "minimum": 1, "maximum": 500},
                                            {"type": "array", "items": {"type": "string"}},
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            }
        },
    },
    "SaleInput": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string", "maxLength": 200},
            "stock": {"type": "integer", "minimum": 1},
            "seat_map": {"$ref": "#/components/schemas/SeatMap"},
            "opens_at": {"type": "string", "format": "date-time"},
            "closes_at": {"type": "string", "format": "date-time"},
            "timezone": {"type": "string", "description": "IANA name, e.g. Asia/Seoul"},
            "per_shopper_limit": {"type": "integer", "minimum": 1, "maximum": 100},
            "hold_seconds": {"type": "integer", "minimum": 10, "maximum": 3600},
            "admission": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    k: {"type": "integer", "minimum": lo, "maximum": hi}
                    for k, (lo, hi) in ADMISSION_BOUNDS.items()
                },
            },
            "identity": {
                "type": "object",
                "additionalProperties": False,
                "description": "`required`: one place per signed-in shopper (the shop's JWT "
                "on join; needs FLASHSALE_IDENTITY_JWKS_*); fixed once the sale opens.",
                "properties": {"required": {"type": "boolean"}},
            },
            "proof_of_work": {
                "type": "object",
                "additionalProperties": False,
                "description": "A price on new anonymous places: `difficulty` bits of SHA-256 "
                f"work (default {DEFAULT_POW_DIFFICULTY}); the admitter raises it while joins "
                "outpace admission.",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "difficulty": {
                        "type": "integer",
                        "minimum": POW_DIFFICULTY_BOUNDS[0],
                        "maximum": POW_DIFFICULTY_BOUNDS[1],
                    },
                },
            },
        },
        "additionalProperties": False,
    },
    "Sale": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "stock": {"type": "integer"},
            "seated": {"type": "boolean"},
            "opens_at": {"type": "string", "format": "date-time"},
            "closes_at": {"type": "string", "format": "date-time"},
            "timezone": {"type": "string"},
            "per_shopper_limit": {"type": "integer"},
            "hold_seconds": {"type": "integer"},
            "phase": {"enum": ["scheduled", "open", "closed"]},
            "waiting": {"type": "integer"},
            "sold_out": {"type": "boolean"},
            "identity_required": {"type": "boolean"},
            "proof_of_work_required": {"type": "boolean"},
        },
    },
    "AdminSale": {
        "allOf": [
            {"$ref": "#/components/schemas/Sale"},
            {
                "type": "object",
                "properties": {
                    "seat_map": {},
                    "admission": {"type": "object"},
                    "room": {"type": ["object", "null"]},
                },
            },
        ]
    },
}

_VALIDATION = _error("Invalid field (the error names it)")
_ADMIN_ERRORS = {"401": _error("Missing or wrong admin token"), "403": _error("Admin API disabled")}

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "summary": "Liveness: the process serves requests",
            "responses": {"200": _json({"type": "object"}, "Alive")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: Redis answers (PostgreSQL is reported, not required)",
            "responses": {
                "200": _json({"type": "object"}, "Ready, or degraded: PostgreSQL is down"),
                "503": _json({"type": "object"}, "Redis is down"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI")},
        }
    },
    "/api/sales/{sale_id}": {
        "get": {
            "summary": "A sale's public details and how many are waiting",
            "parameters": [SALE_ID_PARAM],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Sale"}, "The sale"),
                "404": _error("Unknown sale"),
            },
        }
    },
    "/api/sales/{sale_id}/join": {
        "post": {
            "summary": "Join the waiting room; joining again keeps the same place",
            "description": "The visitor comes from X-Visitor-Id or the fs_vid cookie and is issued "
            "(cookie set) when absent. Before the opening the place is in the "
            "pre-queue, drawn at random at the opening; after, first come first "
            "served.",
            "parameters": [
                SALE_ID_PARAM,
                {"name": "X-Visitor-Id", "in": "header", "schema": VISITOR_SCHEMA},
            ],
            "responses": {
                "201": _json({"$ref": "#/components/schemas/Joined"}, "A new place"),
                "200": _json(
                    {"$ref": "#/components/schemas/Joined"}, "The visitor's existing place"
                ),
                "400": _error("Malformed body or visitor id"),
                "404": _error("Unknown sale"),
                "409": _error("The sale is closed or sold out"),
                "413": _error("Body too large"),
                "429": _error("Too many joins from this visitor or address; see Retry-After"),
            },
        }
    },
    "/api/sales/{sale_id}/status": {
        "get": {
            "summary": "Poll your place: state, position, people ahead, estimated wait",
            "description": "Poll again after `poll_after_seconds`, echoing `heartbeat` as `hb`. A "
            "waiter who stops polling for the sale's abandonment window is skipped. "
            "When admitted, the answer carries the admission token.",
            "parameters": [
                SALE_ID_PARAM,
                *TICKET_PARAMS,
                {
                    "name": "hb",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                },
            ],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Status"}, "The waiter's status"),
                "401": _error("Missing, tampered or foreign ticket"),
                "404": _error("Unknown sale"),
                "410": _error("The ticket expired"),
            },
        }
    },
    "/api/sales/{sale_id}/leave": {
        "post": {
            "summary": "Give up a place or an admission so the next person gets it",
            "parameters": [SALE_ID_PARAM, *TICKET_PARAMS],
            "responses": {
                "200": _json({"type": "object"}, "Left"),
                "401": _error("Missing or tampered ticket"),
                "404": _error("Unknown sale"),
                "410": _error("The ticket expired"),
            },
        }
    },
    "/admin/sales": {
        "get": {
            "summary": "List sales",
            "security": ADMIN,
            "parameters": [
                {
                    "name": "include_closed",
                    "in": "query",
                    "schema": {"type": "boolean", "default": True},
                }
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "sales": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/AdminSale"},
                            }
                        },
                    },
                    "The sales",
                ),
                **_ADMIN_ERRORS,
            },
        },
        "post": {
            "summary": "Create a sale",
            "security": ADMIN,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SaleInput"}}
                },
            },
            "responses": {
                "201": _json({"$ref": "#/components/schemas/AdminSale"}, "Created"),
                "400": _error("Malformed JSON"),
                "409": _error("Id taken"),
                "413": _error("Body too large"),
                "415": _error("Not JSON"),
                "422": _VALIDATION,
                **_ADMIN_ERRORS,
            },
        },
    },
    "/admin/sales/{sale_id}": {
        "get": {
            "summary": "A sale with its room's counters",
            "security": ADMIN,
            "parameters": [SALE_ID_PARAM],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/AdminSale"}, "Sale"),
                "404": _error("Unknown sale"),
                **_ADMIN_ERRORS,
            },
        },
        "patch": {
            "summary": "Change some fields (admission settings apply live)",
            "security": ADMIN,
            "parameters": [SALE_ID_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SaleInput"}}
                },
            },
            "responses": {
                "200": _json({"$ref": "#/components/schemas/AdminSale"}, "Changed"),
                "400": _error("Malformed JSON"),
                "404": _error("Unknown sale"),
                "409": _error("Sale closed"),
                "422": _VALIDATION,
                **_ADMIN_ERRORS,
            },
        },
        "put": {
            "summary": "Create or update the sale to match the body (idempotent)",
            "security": ADMIN,
            "parameters": [SALE_ID_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SaleInput"}}
                },
            },
            "responses": {
                "200": _json({"$ref": "#/components/schemas/AdminSale"}, "Updated"),
                "201": _json({"$ref": "#/components/schemas/AdminSale"}, "Created"),
                "400": _error("Malformed JSON"),
                "409": _error("Sale closed"),
                "422": _VALIDATION,
                **_ADMIN_ERRORS,
            },
        },
    },
    "/admin/sales/{sale_id}/close": {
        "post": {
            "summary": "Close a sale now: joins and admission stop, waiters learn `closed`",
            "security": ADMIN,
            "parameters": [SALE_ID_PARAM],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/AdminSale"}, "Closed"),
                "404": _error("Unknown sale"),
                **_ADMIN_ERRORS,
            },
        }
    },
}


ORDER_ID_PARAM = {
    "name": "order_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
    "description": "Any usual spelling of the UUID (upper case, no hyphens, braces, urn:uuid:) "
    "names the same order; anything else is no order (404 unknown_order).",
}
VISITOR_PARAM = {
    "name": "X-Visitor-Id",
    "in": "header",
    "schema": VISITOR_SCHEMA,
    "description": "The visitor id from join (or the fs_vid cookie).",
}
_ORDER = {"$ref": "#/components/schemas/Order"}
SCHEMAS["Order"] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "sale": {"type": "string"},
        "status": {
            "enum": ["held", "paying", "confirmed", "cancelling", "released", "failed", "cancelled"]
        },
        "quantity": {"type": "integer"},
        "seats": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "section": {"type": "string"},
                    "row": {"type": "string"},
                    "seat": {"type": "string"},
                },
            },
        },
        "amount_cents": {"type": "integer"},
        "currency": {"type": "string"},
        "hold_expires_at": {"type": ["string", "null"], "format": "date-time"},
        "reason": {"type": ["string", "null"]},
    },
}
_ORDER_ERRORS = {"401": _error("No visitor id"), "404": _error("Unknown sale or order")}

PATHS.update(
    {
        "/api/sales/{sale_id}/seats": {
            "get": {
                "summary": "The venue's seats and which are free (seated sales)",
                "parameters": [SALE_ID_PARAM],
                "responses": {
                    "200": _json({"type": "object"}, "Sections, rows and seats"),
                    "404": _error("Unknown sale, or not a seated sale"),
                },
            }
        },
        "/api/sales/{sale_id}/holds": {
            "post": {
                "summary": "Hold stock: a quantity, a party of seats chosen for you, or seats",
                "description": "Needs the admission token from status as a bearer token. A party "
                "gets adjacent seats in one row when any row has them. Send an "
                "Idempotency-Key so a retried request returns the same hold, "
                "also after the admission token has expired.",
                "parameters": [
                    SALE_ID_PARAM,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"},
                    },
                ],
                "security": [{"admission": []}],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                                    "seats": {
                                        "type": "array",
                                        "items": {
                                            "oneOf": [
                                                {"type": "integer"},
                                                {
                                                    "type": "object",
                                                    "required": ["section", "row", "seat"],
                                                },
                                            ]
                                        },
                                    },
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "201": _json(_ORDER, "Held; pay before hold_expires_at"),
                    "200": _json(_ORDER, "The hold this Idempotency-Key already made"),
                    "400": _error("Malformed JSON or Idempotency-Key"),
                    "401": _error("Missing or tampered admission token"),
                    "413": _error("Body too large"),
                    "415": _error("Not JSON"),
                    "403": _error("Admission not active"),
                    "404": _error("Unknown sale"),
                    "409": _error("Sold out, limit reached, not enough stock, seats taken, closed"),
                    "410": _error(
                        "Admission token expired (and no hold made with this Idempotency-Key)"
                    ),
                    "422": _VALIDATION,
                    "503": _error("Stock being prepared; see Retry-After"),
                },
            }
        },
        "/api/sales/{sale_id}/orders": {
            "get": {
                "summary": "The shopper's orders and their status",
                "parameters": [SALE_ID_PARAM, VISITOR_PARAM],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"orders": {"type": "array", "items": _ORDER}},
                        },
                        "Orders, oldest first",
                    ),
                    **_ORDER_ERRORS,
                },
            }
        },
        "/api/sales/{sale_id}/orders/{order_id}": {
            "get": {
                "summary": "One order",
                "parameters": [SALE_ID_PARAM, ORDER_ID_PARAM, VISITOR_PARAM],
                "responses": {"200": _json(_ORDER, "The order"), **_ORDER_ERRORS},
            }
        },
        "/api/sales/{sale_id}/orders/{order_id}/pay": {
            "post": {
                "summary": "Pay for a hold; confirmed only once PostgreSQL has the order",
                "parameters": [SALE_ID_PARAM, ORDER_ID_PARAM, VISITOR_PARAM],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"payment_token": {"type": "string"}},
                            }
                        }
                    }
                },
                "responses": {
                    "200": _json(_ORDER, "Confirmed (also for a repeated call)"),
                    "400": _error("Malformed JSON"),
                    "413": _error("Body too large"),
                    "415": _error("Not JSON"),
                    "422": _VALIDATION,
                    "402": _error("Declined; the hold was released"),
                    "409": _error("Payment in progress, or the order failed (refunded)"),
                    "410": _error("The hold expired or was released"),
                    "503": _error(
                        "Payment provider unavailable; the hold is kept, see Retry-After"
                    ),
                    **_ORDER_ERRORS,
                },
            }
        },
        "/api/sales/{sale_id}/orders/{order_id}/cancel": {
            "post": {
                "summary": "Cancel a hold, or a confirmed order (refunded); the stock returns",
                "parameters": [SALE_ID_PARAM, ORDER_ID_PARAM, VISITOR_PARAM],
                "responses": {
                    "200": _json(_ORDER, "Cancelled"),
                    "409": _error("Not cancellable in its state"),
                    "503": _error("Refund not possible now; see Retry-After"),
                    **_ORDER_ERRORS,
                },
            }
        },
        "/admin/sales/{sale_id}/prewarm": {
            "post": {
                "summary": "Load the sale's stock into Redis (refused once warm unless force=true)",
                "security": ADMIN,
                "parameters": [
                    SALE_ID_PARAM,
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json({"type": "object"}, "Warm"),
                    "409": _json({"type": "object"}, "Already warm"),
                    "404": _error("Unknown sale"),
                    **_ADMIN_ERRORS,
                },
            }
        },
        "/admin/sales/{sale_id}/reconcile": {
            "get": {
                "summary": "Check stock = sold + held + available in Redis and PostgreSQL",
                "security": ADMIN,
                "parameters": [SALE_ID_PARAM],
                "responses": {
                    "200": _json({"type": "object"}, "The report"),
                    "404": _error("Unknown sale"),
                    **_ADMIN_ERRORS,
                },
            },
            "post": {
                "summary": "Reconcile; repair=true rebuilds Redis from PostgreSQL",
                "security": ADMIN,
                "parameters": [
                    SALE_ID_PARAM,
                    {"name": "repair", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json({"type": "object"}, "The report"),
                    "409": _error("Stream not drained yet"),
                    "404": _error("Unknown sale"),
                    **_ADMIN_ERRORS,
                },
            },
        },
    }
)

PATHS.update(PAGE_PATHS)  # the shopper's pages

HEADERS: dict[str, Any] = {
    "X-Request-ID": {
        "description": "The request's id: the caller's X-Request-ID when it is a sane token "
        "(HAProxy's), else a new one; in every log line the request caused.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Location": {
        "description": "The created resource.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Set-Cookie": {
        "description": "fs_vid, the visitor id (HttpOnly, SameSite=Lax), when the caller did "
        "not send this visitor's cookie.",
        "schema": {"type": "string"},
    },
}
# no data store behind them: they cannot be unavailable
_STORELESS = {"/healthz", "/metrics", "/openapi.json", "/static/{name}", "/readyz"}
_BODY_METHODS = {"post", "put", "patch"}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _complete(paths: dict[str, dict[str, Any]]) -> None:
    """What every operation can answer besides its own outcomes, from the rules every route
    shares (api/inputs.py, api/errors.py): malformed input (400), bodies (413, 415, 422), a
    data store not answering (503 with Retry-After), the request id on every answer."""
    for path, item in paths.items():
        for method, operation in item.items():
            responses: dict[str, Any] = operation["responses"]
            if not path.startswith(("/static", "/sales", "/healthz", "/metrics", "/openapi")) and (
                path != "/"
            ):
                responses.setdefault(
                    "400",
                    _error(
                        "Malformed input, `field` naming it: a query parameter this operation "
                        "does not define or one given twice, a header given twice, a value "
                        "of the wrong type"
                    ),
                )
            if method in _BODY_METHODS:
                responses.setdefault("413", _error("Body too large"))
                responses.setdefault("415", _error("Not JSON"))
                responses.setdefault(
                    "422", _error("The body is not a JSON object of this operation's fields")
                )
            if path not in _STORELESS:
                responses.setdefault(
                    "503", _error("A data store is not answering; try again after Retry-After")
                )
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = _header("X-Request-ID")
                if status == "429" or (status == "503" and path != "/readyz"):
                    headers["Retry-After"] = _header("Retry-After")


# the join's identity and proof of work (api/identity.py)
_JOIN = PATHS["/api/sales/{sale_id}/join"]["post"]
_JOIN["description"] += identity.OPENAPI_DESCRIPTION
_JOIN["parameters"] += identity.OPENAPI_PARAMETERS
_JOIN["responses"].update(identity.OPENAPI_RESPONSES)
SCHEMAS.update(identity.OPENAPI_SCHEMAS)

_complete(PATHS)
for _path, _status in (
    ("/admin/sales", "201"),
    ("/api/sales/{sale_id}/holds", "201"),
    ("/api/sales/{sale_id}/holds", "200"),
):
    _operation = PATHS[_path]["post"]
    _operation["responses"][_status]["headers"]["Location"] = _header("Location")
for _status in ("200", "201"):
    PATHS["/api/sales/{sale_id}/join"]["post"]["responses"][_status]["headers"]["Set-Cookie"] = (
        _header("Set-Cookie")
    )


def openapi_document(routes: list[BaseRoute]) -> dict[str, Any]:
    documented = {
        path: methods
        for path, methods in PATHS.items()
        if any(isinstance(r, Route) and r.path == path for r in routes)
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "FlashSale",
            "version": "1",
            "description": "A fair virtual waiting room and flash-sale API.",
        },
        "paths": documented,
        "components": {
            "schemas": SCHEMAS,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "FLASHSALE_ADMIN_TOKEN",
                },
                "admission": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admission token from status",
                },
            },
        },
    }
