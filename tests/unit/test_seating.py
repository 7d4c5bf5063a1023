"""Seat maps, pure: numbering, labels, the rows handed to the hold script, and the Redis
bitmap's bit order. No Redis, no PostgreSQL (where a party sits is chosen by the hold script:
tests/integration/test_seating_script.py)."""

from __future__ import annotations

from typing import Any

from flashsale.waiting_room.sale import parse_seat_map
from flashsale.waiting_room.seating import Layout, taken_from_bitmap


def layout_of(sections: list[tuple[str, list[tuple[str, Any]]]]) -> Layout:
    """A layout through the same normalisation a sale's seat map goes through."""
    seat_map, _ = parse_seat_map(
        {
            "sections": [
                {"name": name, "rows": [{"name": row, "seats": seats} for row, seats in rows]}
                for name, rows in sections
            ]
        }
    )
    return Layout.from_seat_map(seat_map)


def grid(rows: int, seats: int) -> Layout:
    """One section, `rows` rows of `seats` seats: seat id = row * seats + position."""
    return layout_of([("Main", [(str(r + 1), seats) for r in range(rows)])])


def setbit(bitmap: bytearray, seat: int) -> None:
    """What Redis SETBIT does: offset 0 is the most significant bit of the first byte."""
    while len(bitmap) <= seat // 8:
        bitmap.append(0)
    bitmap[seat // 8] |= 1 << (7 - seat % 8)


# -- layout --------------------------------------------------------------------------------


def test_seats_are_numbered_in_map_order_with_their_labels() -> None:
    layout = layout_of(
        [
            ("Stalls", [("A", 3), ("B", ["1", "2", "2a", "3"])]),
            ("Balcony", [("1", 2)]),
        ]
    )
    assert layout.size == 9
    assert [(r.section, r.name, r.first, r.labels) for r in layout.rows] == [
        ("Stalls", "A", 0, ("1", "2", "3")),
        ("Stalls", "B", 3, ("1", "2", "2a", "3")),
        ("Balcony", "1", 7, ("1", "2")),
    ]
    assert [list(r.seats) for r in layout.rows] == [[0, 1, 2], [3, 4, 5, 6], [7, 8]]
    assert [layout.label(s) for s in range(9)] == [
        "Stalls / row A / seat 1",
        "Stalls / row A / seat 2",
        "Stalls / row A / seat 3",
        "Stalls / row B / seat 1",
        "Stalls / row B / seat 2",
        "Stalls / row B / seat 2a",
        "Stalls / row B / seat 3",
        "Balcony / row 1 / seat 1",
        "Balcony / row 1 / seat 2",
    ]
    assert layout.describe(5) == {"id": 5, "section": "Stalls", "row": "B", "seat": "2a"}
    assert layout.row_of(6) is layout.rows[1]
    assert layout.find("Stalls", "B", "2a") == 5
    assert layout.find("Balcony", "1", "2") == 8
    assert layout.find("Balcony", "A", "1") is None
    assert layout.find("Stalls", "A", "4") is None


def test_row_labels_given_as_numbers_become_text() -> None:
    layout = Layout.from_seat_map(
        {"sections": [{"name": 1, "rows": [{"name": 7, "seats": [10, 11]}]}]}
    )
    assert layout.label(1) == "1 / row 7 / seat 11"
    assert layout.size == 2


# -- the rows the hold script seats parties in ------------------------------------------------


def test_rows_argument_groups_rows_of_equal_length_front_to_back() -> None:
    assert grid(3, 10).rows_argument == "10*3"
    layout = layout_of(
        [
            ("Stalls", [("A", 20), ("B", 20), ("C", 22)]),
            ("Balcony", [("1", 22), ("2", ["1", "2", "3"])]),
        ]
    )
    assert layout.rows_argument == "20*2,22*2,3*1"
    assert layout.size == 20 * 2 + 22 * 2 + 3 == 87  # the groups cover every seat, in order


# -- the bitmap ---------------------------------------------------------------------------


def test_bitmap_bit_order_is_redis_setbit_order() -> None:
    assert taken_from_bitmap(None, 100) == set()
    assert taken_from_bitmap(b"", 100) == set()
    assert taken_from_bitmap(b"\x80", 8) == {0}  # SETBIT key 0 1
    assert taken_from_bitmap(b"\x01", 8) == {7}
    assert taken_from_bitmap(b"\x00\x80", 16) == {8}
    assert taken_from_bitmap(b"\xa0\x05", 16) == {0, 2, 13, 15}
    assert taken_from_bitmap(b"\xff", 8) == set(range(8))
    # bits past the layout's last seat (the byte's padding) are not seats
    assert taken_from_bitmap(b"\xff", 5) == {0, 1, 2, 3, 4}
    assert taken_from_bitmap(b"\x00\x00\x00\xff", 26) == {24, 25}
    bitmap = bytearray()
    seats = {0, 3, 9, 17, 63, 64, 199}
    for seat in seats:
        setbit(bitmap, seat)
    assert taken_from_bitmap(bytes(bitmap), 200) == seats
