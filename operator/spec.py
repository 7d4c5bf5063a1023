"""A FlashSale's spec turned into the admin API's sale body: pure, tested alone.

The body goes to `Sales.apply`, the one path that creates and changes sales, so a FlashSale and
an admin API call asking for the same thing get the same sale and the same refusals. Every
field is written out (defaults included): removing a field from the manifest puts the default
back, as one expects of a declarative object.

Errors name the manifest's fields (`spec.schedule.closesAt`), not the API's (`closes_at`), so
the message in the FlashSale's status tells a person exactly what to change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from flashsale.operator import schedule
from flashsale.waiting_room.sale import (
    ADMISSION_DEFAULTS,
    DEFAULT_POW_DIFFICULTY,
    SALE_ID,
    Sale,
    ValidationError,
    parse_sale,
)

GROUP = "flashsale.io"
VERSION = "v1alpha1"
PLURAL = "flashsales"
KIND = "FlashSale"

# admin API field -> FlashSale field
_FIELDS = {
    "body": "spec",
    "id": "spec.saleId",
    "name": "spec.product.name",
    "price_cents": "spec.product.priceCents",
    "currency": "spec.product.currency",
    "stock": "spec.inventory.quantity",
    "seat_map": "spec.inventory.seatMap",
    "opens_at": "spec.schedule.opensAt",
    "closes_at": "spec.schedule.closesAt",
    "timezone": "spec.schedule.timeZone",
    "per_shopper_limit": "spec.perShopperLimit",
    "hold_seconds": "spec.holdSeconds",
    "admission": "spec.admission",
    "admission.batch_size": "spec.admission.batchSize",
    "admission.batch_interval_ms": "spec.admission.batchIntervalMs",
    "admission.max_active": "spec.admission.maxActive",
    "admission.admission_ttl_seconds": "spec.admission.admissionTtlSeconds",
    "admission.abandon_after_seconds": "spec.admission.abandonAfterSeconds",
    "identity": "spec.shoppers",
    "identity.required": "spec.shoppers.identityRequired",
    "proof_of_work": "spec.shoppers.proofOfWork",
    "proof_of_work.enabled": "spec.shoppers.proofOfWork.enabled",
    "proof_of_work.difficulty": "spec.shoppers.proofOfWork.difficulty",
}
_ADMISSION = {  # FlashSale spec.admission key -> admin API key
    "batchSize": "batch_size",
    "batchIntervalMs": "batch_interval_ms",
    "maxActive": "max_active",
    "admissionTtlSeconds": "admission_ttl_seconds",
    "abandonAfterSeconds": "abandon_after_seconds",
}
_SHOPPERS = ("identityRequired", "proofOfWork")
_PROOF_OF_WORK = ("enabled", "difficulty")
_DEFAULTS = {f.name: f.default for f in fields(Sale)}
# names worth translating inside a message: the API's snake_case ones
_IN_MESSAGES = sorted((k for k in _FIELDS if "_" in k), key=len, reverse=True)
_SEATS = re.compile(r"^(seat_map\.sections\[\d+\]\.rows\[\d+\])\.seats\[(\d+)\]")


def cr_field(api_field: str) -> str:
    """The FlashSale field behind an admin API field, e.g. `admission.max_active` ->
    `spec.admission.maxActive`, `seat_map.sections[0].rows[2].seats[3]` -> `...labels[3]`."""
    seat = _SEATS.match(api_field)
    if seat:
        api_field = f"{seat.group(1)}.labels[{seat.group(2)}]{api_field[seat.end() :]}"
    if api_field in _FIELDS:
        return _FIELDS[api_field]
    head, dot, rest = api_field.partition(".")
    if head.startswith("seat_map"):
        return "spec.inventory.seatMap" + api_field[len("seat_map") :]
    if head in _FIELDS and dot:
        return f"{_FIELDS[head]}.{rest}"
    return api_field if api_field.startswith("spec") else f"spec.{api_field}"


def translate(error: ValidationError) -> ValidationError:
    """The same error in the manifest's words."""
    message = error.message
    for name in _IN_MESSAGES:
        message = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w])", _FIELDS[name], message)
    return ValidationError(cr_field(error.field), message)


def sale_id(name: str, spec: Mapping[str, Any]) -> str:
    """spec.saleId, else the FlashSale's own name."""
    given = spec.get("saleId")
    if given not in (None, ""):
        if not isinstance(given, str) or not SALE_ID.match(given):
            raise ValidationError(
                "spec.saleId",
                "must be 1-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit",
            )
        return given
    if not SALE_ID.match(name or ""):
        raise ValidationError(
            "spec.saleId",
            f"metadata.name {name!r} is not a valid sale id; set spec.saleId to "
            "1-63 lowercase letters, digits or '-'",
        )
    return name


def _object(value: Any, field: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, "is required" if value is None else "must be an object")
    return value


def _seat_map(seat_map: Mapping[str, Any]) -> dict[str, Any]:
    sections = seat_map.get("sections")
    if not isinstance(sections, list) or not sections:
        raise ValidationError("spec.inventory.seatMap.sections", "must be a non-empty list")
    out = []
    for s_i, section in enumerate(sections):
        s_field = f"spec.inventory.seatMap.sections[{s_i}]"
        section = _object(section, s_field, required=True)
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise ValidationError(f"{s_field}.rows", "must be a non-empty list")
        out_rows = []
        for r_i, row in enumerate(rows):
            r_field = f"{s_field}.rows[{r_i}]"
            row = _object(row, r_field, required=True)
            seats, labels = row.get("seats"), row.get("labels")
            if labels is not None:
                if not isinstance(labels, list) or not labels:
                    raise ValidationError(
                        f"{r_field}.labels", "must be a non-empty list of seat labels"
                    )
                if seats is not None and seats != len(labels):
                    raise ValidationError(
                        f"{r_field}.seats",
                        f"is {seats} but {len(labels)} labels are given; "
                        "make them agree (or leave seats out)",
                    )
                value: Any = [str(x) if isinstance(x, int) else x for x in labels]
            else:
                value = seats
            out_rows.append({"name": row.get("name"), "seats": value})
        out.append({"name": section.get("name"), "rows": out_rows})
    return {"sections": out}


def to_sale_body(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The admin API body for a FlashSale called `name` with `spec`."""
    spec = _object(spec, "spec", required=True)
    product = _object(spec.get("product"), "spec.product", required=True)
    inventory = _object(spec.get("inventory"), "spec.inventory", required=True)
    sched = _object(spec.get("schedule"), "spec.schedule", required=True)
    has_quantity = inventory.get("quantity") is not None
    has_seats = inventory.get("seatMap") is not None
    if has_quantity == has_seats:
        raise ValidationError(
            "spec.inventory",
            "give exactly one of quantity (a number of units) or seatMap "
            "(sections of rows of seats), " + ("not both" if has_quantity else "not neither"),
        )
    plan = schedule.plan(spec)
    body: dict[str, Any] = {
        "id": sale_id(name, spec),
        "name": product.get("name"),
        "price_cents": product.get("priceCents", _DEFAULTS["price_cents"]),
        "currency": product.get("currency", _DEFAULTS["currency"]),
        "opens_at": plan.opens_at.isoformat(),
        "closes_at": plan.closes_at.isoformat(),
        "timezone": sched.get("timeZone") or "UTC",
        "per_shopper_limit": spec.get("perShopperLimit", _DEFAULTS["per_shopper_limit"]),
        "hold_seconds": spec.get("holdSeconds", _DEFAULTS["hold_seconds"]),
    }
    if has_quantity:
        body["stock"] = inventory["quantity"]
    else:
        body["seat_map"] = _seat_map(_object(inventory["seatMap"], "spec.inventory.seatMap"))
    admission = _object(spec.get("admission"), "spec.admission")
    _no_unknown(admission, tuple(_ADMISSION), "spec.admission")
    body["admission"] = {
        api: admission.get(cr, ADMISSION_DEFAULTS[api]) for cr, api in _ADMISSION.items()
    }
    body.update(_shoppers(_object(spec.get("shoppers"), "spec.shoppers")))
    return body


def _shoppers(shoppers: Mapping[str, Any]) -> dict[str, Any]:
    """spec.shoppers as the API's `identity` and `proof_of_work`, both always written out:
    removing them from the manifest turns them off."""
    _no_unknown(shoppers, _SHOPPERS, "spec.shoppers")
    pow_spec = _object(shoppers.get("proofOfWork"), "spec.shoppers.proofOfWork")
    _no_unknown(pow_spec, _PROOF_OF_WORK, "spec.shoppers.proofOfWork")
    return {
        "identity": {"required": shoppers.get("identityRequired", False)},
        "proof_of_work": {
            "enabled": pow_spec.get("enabled", False),
            "difficulty": pow_spec.get("difficulty", DEFAULT_POW_DIFFICULTY),
        },
    }


def _no_unknown(given: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        allowed_names = ", ".join(allowed)
        raise ValidationError(f"{where}.{unknown[0]}", f"unknown field; allowed: {allowed_names}")


def validate(name: str, spec: Mapping[str, Any]) -> tuple[dict[str, Any], Sale]:
    """The body and the sale it describes, checked by the same `parse_sale` the admin API runs;
    raises ValidationError in the manifest's words. Checks that depend on the sale's current
    state (stock below what is sold, a new opening once open) happen in `Sales.apply`."""
    body = to_sale_body(name, spec)
    try:
        return body, parse_sale(body)
    except ValidationError as error:
        raise translate(error) from None
