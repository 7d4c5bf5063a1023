"""parse_sale: a valid body becomes a Sale; every mistake names the field at fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from flashsale.waiting_room.sale import (
    ADMISSION_BOUNDS,
    ADMISSION_DEFAULTS,
    MAX_SEATS,
    Sale,
    ValidationError,
    parse_datetime,
    parse_sale,
    parse_seat_map,
)

OPENS = "2031-06-01T10:00:00+09:00"
CLOSES = "2031-06-01T12:00:00+09:00"


def body(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": "summer-drop-1",
        "name": "Summer drop",
        "stock": 500,
        "opens_at": OPENS,
        "closes_at": CLOSES,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not _DROP}


_DROP = object()


def field_of(value: Any, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_sale(value, **kwargs)
    assert info.value.message
    assert str(info.value).startswith(info.value.field)
    return info.value.field


def test_full_valid_body() -> None:
    sale = parse_sale(
        body(
            name="  Summer drop  ",
            timezone="Asia/Seoul",
            per_shopper_limit=4,
            hold_seconds=120,
            admission={
                "batch_size": 50,
                "batch_interval_ms": 500,
                "max_active": 200,
                "admission_ttl_seconds": 300,
                "abandon_after_seconds": 30,
            },
        )
    )
    assert sale == Sale(
        id="summer-drop-1",
        name="Summer drop",
        stock=500,
        opens_at=datetime(2031, 6, 1, 1, 0, tzinfo=UTC),
        closes_at=datetime(2031, 6, 1, 3, 0, tzinfo=UTC),
        timezone="Asia/Seoul",
        seat_map=None,
        per_shopper_limit=4,
        hold_seconds=120,
        batch_size=50,
        batch_interval_ms=500,
        max_active=200,
        admission_ttl_seconds=300,
        abandon_after_seconds=30,
    )
    assert sale.opens_at.utcoffset() == timedelta(hours=9)  # the given offset is kept


def test_minimal_body_takes_defaults() -> None:
    sale = parse_sale(body())
    assert sale.timezone == "UTC"
    assert sale.per_shopper_limit == 2 and sale.hold_seconds == 300
    assert {k: getattr(sale, k) for k in ADMISSION_DEFAULTS} == ADMISSION_DEFAULTS
    assert not sale.seated


@pytest.mark.parametrize(
    "stamp",
    [
        "2031-06-01T01:00:00Z",
        "2031-06-01T01:00:00+00:00",
        "2031-06-01T10:00:00+09:00",
        "2031-06-01T01:00:00.5Z",
        "2031-05-31T20:00:00-05:00",
    ],
)
def test_accepted_date_forms(stamp: str) -> None:
    assert parse_datetime(stamp, "opens_at").astimezone(UTC).replace(microsecond=0) == datetime(
        2031, 6, 1, 1, 0, tzinfo=UTC
    )


def test_seat_map_counts() -> None:
    seat_map = {
        "sections": [
            {"name": "Floor", "rows": [{"name": "A", "seats": 10}, {"name": "B", "seats": 12}]},
            {"name": "Balcony", "rows": [{"name": 1, "seats": 3}]},
        ]
    }
    sale = parse_sale(body(stock=_DROP, seat_map=seat_map))
    assert sale.stock == 25
    assert sale.seated
    assert sale.seat_map == {
        "sections": [
            {
                "name": "Floor",
                "rows": [
                    {"name": "A", "seats": [str(n) for n in range(1, 11)]},
                    {"name": "B", "seats": [str(n) for n in range(1, 13)]},
                ],
            },
            {"name": "Balcony", "rows": [{"name": "1", "seats": ["1", "2", "3"]}]},
        ]
    }


def test_seat_map_labels() -> None:
    seat_map = {
        "sections": [
            {
                "name": "VIP",
                "rows": [
                    {"name": "A", "seats": ["A1", "A2", "A-3", 4]},
                    {"name": "B", "seats": ["1", "2"]},
                ],
            }
        ]
    }
    sale = parse_sale(body(stock=_DROP, seat_map=seat_map))
    assert sale.stock == 6
    assert sale.seat_map is not None
    assert sale.seat_map["sections"][0]["rows"][0]["seats"] == ["A1", "A2", "A-3", "4"]


def test_seat_map_null_with_stock_is_a_plain_sale() -> None:
    sale = parse_sale(body(seat_map=None))
    assert sale.stock == 500 and sale.seat_map is None


def test_seat_map_size_limit() -> None:
    rows = [{"name": f"R{i}", "seats": 500} for i in range(MAX_SEATS // 500 + 1)]
    with pytest.raises(ValidationError) as info:
        parse_seat_map({"sections": [{"name": "S", "rows": rows}]})
    assert info.value.field == "seat_map"


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["id", "name", "opens_at", "closes_at"])
def test_missing_required_field(missing: str) -> None:
    assert field_of(body(**{missing: _DROP})) == missing


def test_missing_stock_and_seat_map() -> None:
    assert field_of(body(stock=_DROP)) == "stock"


def test_null_seat_map_without_stock() -> None:
    """`seat_map: null` is not a quantity: the sale still needs a stock."""
    assert field_of(body(stock=_DROP, seat_map=None)) == "stock"


def test_stock_and_seat_map_together() -> None:
    seat_map = {"sections": [{"name": "S", "rows": [{"name": "A", "seats": 2}]}]}
    assert field_of(body(seat_map=seat_map)) == "stock"


@pytest.mark.parametrize("unknown", ["price", "ID", "stocks", ""])
def test_unknown_field(unknown: str) -> None:
    assert field_of(body(**{unknown: 1})) == unknown


@pytest.mark.parametrize("value", [[], "sale", 3, None, True, 1.5])
def test_body_not_an_object(value: Any) -> None:
    assert field_of(value) == "body"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stock", "100"),
        ("stock", True),
        ("stock", False),
        ("stock", 10.0),
        ("stock", 1.5),
        ("stock", None),
        ("stock", [100]),
        ("stock", {"n": 1}),
        ("stock", 0),
        ("stock", -5),
        ("stock", 100_000_001),
        ("name", 5),
        ("name", ""),
        ("name", "   "),
        ("name", None),
        ("name", "x" * 201),
        ("name", ["a"]),
        ("opens_at", 1893456000),
        ("opens_at", None),
        ("opens_at", True),
        ("opens_at", ["x"]),
        ("closes_at", 1.5),
        ("timezone", 9),
        ("timezone", ""),
        ("timezone", None),
        ("per_shopper_limit", "2"),
        ("per_shopper_limit", 0),
        ("per_shopper_limit", 101),
        ("per_shopper_limit", True),
        ("per_shopper_limit", 2.0),
        ("hold_seconds", 9),
        ("hold_seconds", 3601),
        ("hold_seconds", "60"),
        ("admission", []),
        ("admission", "fast"),
        ("admission", None),
        ("admission", 1),
    ],
)
def test_wrong_type_or_range(field: str, value: Any) -> None:
    assert field_of(body(**{field: value})) == field


@pytest.mark.parametrize("value", ["2031-06-01T10:00:00", "2031-06-01", "2031-06-01 10:00:00"])
def test_naive_datetimes(value: str) -> None:
    assert field_of(body(opens_at=value)) == "opens_at"
    with pytest.raises(ValidationError, match="time zone"):
        parse_sale(body(closes_at=value))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tomorrow",
        "2031-13-01T10:00:00Z",
        "2031-02-30T10:00:00Z",
        "2031-06-01T25:00:00Z",
        "2031-06-01T10:00:00+25:00",
        "now",
        "0",
        "Z",
    ],
)
def test_unparseable_dates(value: str) -> None:
    assert field_of(body(opens_at=value)) == "opens_at"
    assert field_of(body(closes_at=value)) == "closes_at"


@pytest.mark.parametrize(
    "closes", [OPENS, "2031-06-01T09:59:59+09:00", "2031-06-01T00:59Z", "2030-01-01T00:00:00Z"]
)
def test_closes_not_after_opens(closes: str) -> None:
    assert field_of(body(closes_at=closes)) == "closes_at"


def test_sale_too_long() -> None:
    assert field_of(body(closes_at="2031-09-01T10:00:00+09:00")) == "closes_at"


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus",
        "Asia/Seul",
        "UTC+9",
        "../etc/passwd",
        "/etc/localtime",
        "Europe/",
        "x" * 65,
        "a\x00b",
    ],
)
def test_bad_time_zone(zone: str) -> None:
    assert field_of(body(timezone=zone)) == "timezone"


@pytest.mark.parametrize("zone", ["UTC", "Asia/Seoul", "America/Argentina/Buenos_Aires"])
def test_good_time_zone(zone: str) -> None:
    assert parse_sale(body(timezone=zone)).timezone == zone


@pytest.mark.parametrize(
    "sale_id", ["Summer", "a_b", "-a", "a-", "a.b", "", " a", "a" * 64, "é", 5, None, True, ["a"]]
)
def test_bad_id(sale_id: Any) -> None:
    assert field_of(body(id=sale_id)) == "id"


@pytest.mark.parametrize("sale_id", ["a", "0", "a-b", "a" * 63, "2031-summer"])
def test_good_id(sale_id: str) -> None:
    assert parse_sale(body(id=sale_id)).id == sale_id


def _rows(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"sections": [{"name": "S", "rows": list(rows)}]}


@pytest.mark.parametrize(
    ("seat_map", "field"),
    [
        (_rows({"name": "A", "seats": ["1", "2", "1"]}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": ["1", 1]}), "seat_map.sections[0].rows[0].seats"),
        (
            _rows({"name": "A", "seats": 2}, {"name": "A", "seats": 2}),
            "seat_map.sections[0].rows[1].name",
        ),
        (
            {
                "sections": [
                    {"name": "S", "rows": [{"name": "A", "seats": 1}]},
                    {"name": "S", "rows": [{"name": "A", "seats": 1}]},
                ]
            },
            "seat_map.sections[1].name",
        ),
        ({}, "seat_map.sections"),
        ({"sections": []}, "seat_map.sections"),
        ({"sections": "S"}, "seat_map.sections"),
        ([], "seat_map"),
        ("map", "seat_map"),
        ({"sections": [5]}, "seat_map.sections[0]"),
        ({"sections": [{"rows": [{"name": "A", "seats": 1}]}]}, "seat_map.sections[0].name"),
        ({"sections": [{"name": "S"}]}, "seat_map.sections[0].rows"),
        ({"sections": [{"name": "S", "rows": []}]}, "seat_map.sections[0].rows"),
        ({"sections": [{"name": "S", "rows": ["A"]}]}, "seat_map.sections[0].rows[0]"),
        (_rows({"seats": 1}), "seat_map.sections[0].rows[0].name"),
        (_rows({"name": "A"}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": 0}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": 501}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": True}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": []}), "seat_map.sections[0].rows[0].seats"),
        (_rows({"name": "A", "seats": "12"}), "seat_map.sections[0].rows[0].seats"),
        (
            _rows({"name": "A", "seats": ["ok", "bad/label"]}),
            "seat_map.sections[0].rows[0].seats[1]",
        ),
        (_rows({"name": "A", "seats": [""]}), "seat_map.sections[0].rows[0].seats[0]"),
        (_rows({"name": "A", "seats": [None]}), "seat_map.sections[0].rows[0].seats[0]"),
        (_rows({"name": "x" * 33, "seats": 1}), "seat_map.sections[0].rows[0].name"),
        (_rows({"name": True, "seats": 1}), "seat_map.sections[0].rows[0].name"),
    ],
)
def test_bad_seat_map(seat_map: Any, field: str) -> None:
    assert field_of(body(stock=_DROP, seat_map=seat_map)) == field


def test_max_active_below_batch_size() -> None:
    admission = {"batch_size": 100, "max_active": 99}
    assert field_of(body(admission=admission)) == "admission.max_active"
    # the default max_active (500) is below a large batch too
    assert field_of(body(admission={"batch_size": 501})) == "admission.max_active"
    assert parse_sale(body(admission={"batch_size": 100, "max_active": 100})).max_active == 100


@pytest.mark.parametrize("key", sorted(ADMISSION_BOUNDS))
def test_admission_bounds(key: str) -> None:
    low, high = ADMISSION_BOUNDS[key]
    base = {"batch_size": 1, "max_active": 100_000}
    for bad in (low - 1, high + 1, str(low), float(low), True, None):
        assert field_of(body(admission={**base, key: bad})) == f"admission.{key}"
    for good in (low, high):
        if key == "max_active" and good < base["batch_size"]:
            continue
        assert getattr(parse_sale(body(admission={**base, key: good})), key) == good


def test_unknown_admission_field() -> None:
    assert field_of(body(admission={"batch_size": 5, "speed": 9})) == "admission.speed"


# -- partial updates -------------------------------------------------------------------------


def test_partial_update_keeps_other_fields() -> None:
    existing = parse_sale(
        body(
            timezone="Asia/Seoul",
            per_shopper_limit=3,
            admission={"batch_size": 20, "max_active": 40},
        )
    )
    changed = parse_sale({"name": "Renamed"}, existing=existing)
    assert changed.name == "Renamed"
    assert changed == Sale(**{**existing.as_row(), "name": "Renamed"})

    faster = parse_sale({"admission": {"batch_interval_ms": 200}}, existing=existing)
    assert faster.batch_interval_ms == 200
    assert (faster.batch_size, faster.max_active) == (20, 40)
    assert faster.timezone == "Asia/Seoul" and faster.per_shopper_limit == 3

    assert parse_sale({}, existing=existing) == existing
    assert parse_sale({"id": existing.id}, existing=existing) == existing


def test_partial_update_switches_between_stock_and_seat_map() -> None:
    existing = parse_sale(body())
    seated = parse_sale({"seat_map": _rows({"name": "A", "seats": 4})}, existing=existing)
    assert seated.stock == 4 and seated.seated
    plain = parse_sale({"stock": 9}, existing=seated)
    assert plain.stock == 9 and plain.seat_map is None


def test_partial_update_is_validated_as_a_whole() -> None:
    existing = parse_sale(body())
    assert field_of({"id": "other"}, existing=existing) == "id"
    assert field_of({"closes_at": "2031-06-01T09:00:00+09:00"}, existing=existing) == "closes_at"
    assert field_of({"admission": {"batch_size": 600}}, existing=existing) == (
        "admission.max_active"
    )
    assert field_of({"stock": "many"}, existing=existing) == "stock"
    assert field_of({"colour": "red"}, existing=existing) == "colour"


def test_phases_and_views() -> None:
    sale = parse_sale(body())
    opens = sale.opens_at
    assert sale.phase(opens - timedelta(seconds=1)) == "scheduled"
    assert sale.phase(opens) == "open"
    assert sale.phase(sale.closes_at) == "closed"
    tz = timezone(timedelta(hours=-3))
    public = sale.public(datetime.now(tz))
    assert "seat_map" not in public and "admission" not in public
    assert sale.admin(opens)["admission"] == ADMISSION_DEFAULTS
