"""A sale and the validation of what an admin (or the operator) asks for.

Validation is pure and reports the exact field at fault, so the admin API and the operator
give the same clear message for the same mistake.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SALE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}$")
MAX_SEATS = 200_000
# proof of work (waiting_room/pow.py): difficulty in bits, i.e. 2**bits SHA-256 expected
DEFAULT_POW_DIFFICULTY = 18
POW_DIFFICULTY_BOUNDS = (4, 26)

ADMISSION_DEFAULTS = {
    "batch_size": 100,
    "batch_interval_ms": 1000,
    "max_active": 500,
    "admission_ttl_seconds": 600,
    "abandon_after_seconds": 60,
}
ADMISSION_BOUNDS = {
    "batch_size": (1, 100_000),
    "batch_interval_ms": (50, 3_600_000),
    "max_active": (1, 1_000_000),
    "admission_ttl_seconds": (10, 86_400),
    "abandon_after_seconds": (2, 3_600),
}


class ValidationError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as its arguments, not its message
        return (type(self), (self.field, self.message))


@dataclass(frozen=True)
class Sale:
    id: str
    name: str
    stock: int
    opens_at: datetime
    closes_at: datetime
    timezone: str = "UTC"
    seat_map: dict[str, Any] | None = None
    per_shopper_limit: int = 2
    hold_seconds: int = 300
    price_cents: int = 0
    currency: str = "USD"
    batch_size: int = ADMISSION_DEFAULTS["batch_size"]
    batch_interval_ms: int = ADMISSION_DEFAULTS["batch_interval_ms"]
    max_active: int = ADMISSION_DEFAULTS["max_active"]
    admission_ttl_seconds: int = ADMISSION_DEFAULTS["admission_ttl_seconds"]
    abandon_after_seconds: int = ADMISSION_DEFAULTS["abandon_after_seconds"]
    identity_required: bool = False  # one place per signed-in shopper (the shop's JWT)
    pow_difficulty: int = 0  # bits of proof of work a new anonymous place costs; 0: none
    closed_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def seated(self) -> bool:
        return self.seat_map is not None

    def phase(self, now: datetime) -> str:
        if self.closed_at is not None or now >= self.closes_at:
            return "closed"
        return "open" if now >= self.opens_at else "scheduled"

    def public(self, now: datetime) -> dict[str, Any]:
        """What anyone may see of the sale."""
        return {
            "id": self.id,
            "name": self.name,
            "stock": self.stock,
            "seated": self.seated,
            "opens_at": self.opens_at.isoformat(),
            "closes_at": self.closes_at.isoformat(),
            "timezone": self.timezone,
            "per_shopper_limit": self.per_shopper_limit,
            "hold_seconds": self.hold_seconds,
            "price_cents": self.price_cents,
            "currency": self.currency,
            "phase": self.phase(now),
            "identity_required": self.identity_required,
            "proof_of_work_required": self.pow_difficulty > 0,
        }

    def admin(self, now: datetime) -> dict[str, Any]:
        """Everything, for the admin API."""
        body = self.public(now)
        body.update(
            seat_map=self.seat_map,
            admission={k: getattr(self, k) for k in ADMISSION_DEFAULTS},
            identity={"required": self.identity_required},
            proof_of_work={
                "enabled": self.pow_difficulty > 0,
                "difficulty": self.pow_difficulty or DEFAULT_POW_DIFFICULTY,
            },
            closed_at=self.closed_at.isoformat() if self.closed_at else None,
            created_at=self.created_at.isoformat() if self.created_at else None,
            updated_at=self.updated_at.isoformat() if self.updated_at else None,
        )
        return body

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


# -- parsing ---------------------------------------------------------------------------------


def _require_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(field, "must be a JSON object")
    return value


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be a whole number")
    if not low <= value <= high:
        raise ValidationError(field, f"must be between {low} and {high}")
    return value


def _text(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, "must be a non-empty string")
    if len(value) > max_len:
        raise ValidationError(field, f"must be at most {max_len} characters")
    if "\x00" in value:
        raise ValidationError(field, "must not contain NUL characters")
    return value.strip()


def parse_datetime(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(field, "must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            field, f"{value!r} is not an ISO 8601 date-time (e.g. 2026-12-01T12:00:00+01:00)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationError(field, "must include a time zone offset, e.g. 'Z' or '+09:00'")
    try:
        parsed.astimezone(UTC)  # years 1 and 9999 with an offset fall outside datetime's range
    except OverflowError:
        raise ValidationError(field, f"{value!r} is out of range") from None
    return parsed


def _timezone(value: Any, field: str) -> str:
    name = _text(value, field, 64)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(field, f"{name!r} is not an IANA time zone name") from None
    return name


def parse_seat_map(value: Any, field: str = "seat_map") -> tuple[dict[str, Any], int]:
    """Normalise a seat map to sections -> rows -> seat labels; returns it and its seat count."""
    seat_map = _require_object(value, field)
    sections = seat_map.get("sections")
    if not isinstance(sections, list) or not sections:
        raise ValidationError(f"{field}.sections", "must be a non-empty list")
    normal: list[dict[str, Any]] = []
    total = 0
    seen_sections: set[str] = set()
    for s_i, section in enumerate(sections):
        s_field = f"{field}.sections[{s_i}]"
        section = _require_object(section, s_field)
        s_name = _label(section.get("name"), f"{s_field}.name")
        if s_name in seen_sections:
            raise ValidationError(f"{s_field}.name", f"section {s_name!r} appears twice")
        seen_sections.add(s_name)
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise ValidationError(f"{s_field}.rows", "must be a non-empty list")
        normal_rows = []
        seen_rows: set[str] = set()
        for r_i, row in enumerate(rows):
            r_field = f"{s_field}.rows[{r_i}]"
            row = _require_object(row, r_field)
            r_name = _label(row.get("name"), f"{r_field}.name")
            if r_name in seen_rows:
                raise ValidationError(f"{r_field}.name", f"row {r_name!r} appears twice")
            seen_rows.add(r_name)
            seats = row.get("seats")
            if isinstance(seats, int) and not isinstance(seats, bool):
                labels = [str(n) for n in range(1, _int(seats, f"{r_field}.seats", 1, 500) + 1)]
            elif isinstance(seats, list) and seats:
                labels = [_label(x, f"{r_field}.seats[{i}]") for i, x in enumerate(seats)]
                if len(set(labels)) != len(labels):
                    raise ValidationError(f"{r_field}.seats", "seat labels must be unique")
            else:
                raise ValidationError(
                    f"{r_field}.seats", "must be a seat count or a non-empty list of labels"
                )
            total += len(labels)
            if total > MAX_SEATS:
                raise ValidationError(field, f"a sale has at most {MAX_SEATS} seats")
            normal_rows.append({"name": r_name, "seats": labels})
        normal.append({"name": s_name, "rows": normal_rows})
    return {"sections": normal}, total


def _label(value: Any, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not LABEL.match(value):
        raise ValidationError(
            field, "must be a short label of letters, digits, space, '.', '_' or '-'"
        )
    return value


ALLOWED = {
    "id",
    "name",
    "stock",
    "seat_map",
    "opens_at",
    "closes_at",
    "timezone",
    "per_shopper_limit",
    "hold_seconds",
    "price_cents",
    "currency",
    "admission",
    "identity",
    "proof_of_work",
}
CURRENCY = re.compile(r"^[A-Z]{3}$")


def parse_sale(body: Any, *, existing: Sale | None = None) -> Sale:
    """A new sale from `body`, or `existing` changed by the fields `body` carries."""
    body = _require_object(body, "body")
    unknown = sorted(set(body) - ALLOWED)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field; allowed: {', '.join(sorted(ALLOWED))}")
    changes: dict[str, Any] = {}
    if existing is None:
        for required in ("id", "name", "opens_at", "closes_at"):
            if required not in body:
                raise ValidationError(required, "is required")
        if "stock" not in body and body.get("seat_map") is None:
            raise ValidationError("stock", "give either stock (a quantity) or seat_map")
        sale_id = body["id"]
        if not isinstance(sale_id, str) or not SALE_ID.match(sale_id):
            raise ValidationError(
                "id",
                "must be 1-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit",
            )
        changes["id"] = sale_id
    elif "id" in body and body["id"] != existing.id:
        raise ValidationError("id", "cannot be changed")
    if "name" in body:
        changes["name"] = _text(body["name"], "name", 200)
    if "stock" in body and "seat_map" in body and body["seat_map"] is not None:
        raise ValidationError("stock", "give either stock or seat_map, not both")
    if body.get("seat_map") is not None:
        changes["seat_map"], changes["stock"] = parse_seat_map(body["seat_map"])
    elif "stock" in body:
        changes["stock"] = _int(body["stock"], "stock", 1, 100_000_000)
        changes["seat_map"] = None
    for name in ("opens_at", "closes_at"):
        if name in body:
            changes[name] = parse_datetime(body[name], name)
    if "timezone" in body:
        changes["timezone"] = _timezone(body["timezone"], "timezone")
    if "per_shopper_limit" in body:
        changes["per_shopper_limit"] = _int(body["per_shopper_limit"], "per_shopper_limit", 1, 100)
    if "hold_seconds" in body:
        changes["hold_seconds"] = _int(body["hold_seconds"], "hold_seconds", 10, 3600)
    if "price_cents" in body:
        changes["price_cents"] = _int(body["price_cents"], "price_cents", 0, 100_000_000)
    if "currency" in body:
        if not isinstance(body["currency"], str) or not CURRENCY.match(body["currency"]):
            raise ValidationError("currency", "must be a three-letter ISO 4217 code, e.g. EUR")
        changes["currency"] = body["currency"]
    if "admission" in body:
        admission = _require_object(body["admission"], "admission")
        for key in sorted(set(admission) - set(ADMISSION_BOUNDS)):
            raise ValidationError(
                f"admission.{key}", f"unknown field; allowed: {', '.join(ADMISSION_BOUNDS)}"
            )
        for key, (low, high) in ADMISSION_BOUNDS.items():
            if key in admission:
                changes[key] = _int(admission[key], f"admission.{key}", low, high)
    if "identity" in body:
        identity = _require_object(body["identity"], "identity")
        for key in sorted(set(identity) - {"required"}):
            raise ValidationError(f"identity.{key}", "unknown field; allowed: required")
        if "required" in identity:
            changes["identity_required"] = _bool(identity["required"], "identity.required")
    if "proof_of_work" in body:
        changes["pow_difficulty"] = _proof_of_work(body["proof_of_work"])

    sale = replace(existing, **changes) if existing else Sale(**changes)
    if sale.closes_at <= sale.opens_at:
        raise ValidationError("closes_at", "must be after opens_at")
    if sale.closes_at - sale.opens_at > timedelta(days=90):
        raise ValidationError("closes_at", "a sale lasts at most 90 days")
    if sale.max_active < sale.batch_size:
        raise ValidationError("admission.max_active", "must be at least admission.batch_size")
    if sale.identity_required and sale.pow_difficulty:
        raise ValidationError(
            "proof_of_work.enabled",
            "a sale that requires identity gives one place per shopper already: "
            "proof of work is for anonymous sales",
        )
    return sale


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, "must be true or false")
    return value


def _proof_of_work(value: Any) -> int:
    """The difficulty in bits that `{"enabled", "difficulty"}` asks for; 0 when off."""
    pow_body = _require_object(value, "proof_of_work")
    for key in sorted(set(pow_body) - {"enabled", "difficulty"}):
        raise ValidationError(f"proof_of_work.{key}", "unknown field; allowed: enabled, difficulty")
    enabled = _bool(pow_body.get("enabled", True), "proof_of_work.enabled")
    low, high = POW_DIFFICULTY_BOUNDS
    difficulty = DEFAULT_POW_DIFFICULTY
    if "difficulty" in pow_body:
        difficulty = _int(pow_body["difficulty"], "proof_of_work.difficulty", low, high)
    return difficulty if enabled else 0
