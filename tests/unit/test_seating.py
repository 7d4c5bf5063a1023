"""Seat maps and seat choice, pure: numbering, labels, choosing seats for a party, the Redis
bitmap's bit order and the `together` test. No Redis, no PostgreSQL."""

from __future__ import annotations

import random
from typing import Any

import pytest

from flashsale.waiting_room.sale import parse_seat_map
from flashsale.waiting_room.seating import Layout, _runs, choose_seats, taken_from_bitmap, together


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


# -- choose_seats: together ----------------------------------------------------------------


def test_a_party_sits_together_in_the_front_row_centre_first() -> None:
    layout = grid(2, 10)
    assert choose_seats(layout, set(), 4) == [
        [3, 4, 5, 6],
        [2, 3, 4, 5],  # front row, centre of the run first
        [13, 14, 15, 16],
        [12, 13, 14, 15],
    ]
    assert choose_seats(layout, set(), 10) == [list(range(10)), list(range(10, 20))]


def test_several_alternatives_at_most_as_many_as_asked() -> None:
    layout = grid(5, 10)
    choices = choose_seats(layout, set(), 2)
    assert len(choices) == 6
    assert choices[:2] == [[4, 5], [3, 4]]  # front row: (10 - 2) / 2 = 4 is the centre
    assert all(together(layout, c) for c in choices)
    assert choose_seats(layout, set(), 2, alternatives=3) == choices[:3]
    assert len({tuple(c) for c in choices}) == 6


def test_together_in_a_later_row_beats_apart_in_a_front_row() -> None:
    layout = grid(3, 6)
    # front row: free seats 0, 2, 4 (apart); second row: free 8, 9, 10 (a run of three)
    taken = {1, 3, 5, 6, 7, 11}
    assert choose_seats(layout, taken, 3)[0] == [8, 9, 10]
    assert all(together(layout, c) for c in choose_seats(layout, taken, 3))
    # a run of exactly the party's size at the row's end is used
    taken = set(range(12)) | {12, 13, 14}
    assert choose_seats(layout, taken, 3) == [[15, 16, 17]]


def test_runs_are_split_by_taken_seats() -> None:
    layout = grid(1, 10)
    taken = {3, 4}
    # free runs: 0-2 and 5-9; a party of 3 fits both, the first run first
    assert choose_seats(layout, taken, 3) == [[0, 1, 2], [6, 7, 8], [5, 6, 7]]
    assert choose_seats(layout, taken, 4) == [[5, 6, 7, 8], [6, 7, 8, 9]]


# -- choose_seats: best available ----------------------------------------------------------


def test_best_available_stays_in_one_row_when_no_run_is_long_enough() -> None:
    layout = grid(2, 8)
    # row 1 free: 0, 2, 4, 6 ; row 2 free: 9, 12, 15 (no adjacent pair anywhere)
    taken = {1, 3, 5, 7, 8, 10, 11, 13, 14}
    choices = choose_seats(layout, taken, 3)
    assert choices == [[0, 2, 4], [9, 12, 15]]  # the tightest window of each row, front first
    assert not any(together(layout, c) for c in choices)
    assert all(len({layout.row_of(s) for s in c}) == 1 for c in choices)
    # a row with too few free seats is skipped
    assert choose_seats(layout, taken, 4) == [[0, 2, 4, 6]]


def test_tightest_window_in_a_row() -> None:
    layout = grid(1, 12)
    # free seats: 0, 5, 7, 9, 11
    taken = set(range(12)) - {0, 5, 7, 9, 11}
    assert choose_seats(layout, taken, 3) == [[5, 7, 9]]  # spread 4 beats 0-5-7 (spread 7)


def test_best_available_spills_over_rows_only_when_no_row_has_room() -> None:
    layout = grid(3, 4)
    # two free seats per row, none adjacent across the row's end
    taken = {1, 2, 5, 6, 9, 10}
    assert choose_seats(layout, taken, 3) == [[0, 3, 4], [4, 7, 8]]
    assert choose_seats(layout, taken, 6) == [[0, 3, 4, 7, 8, 11]]
    assert choose_seats(layout, taken, 7) == []


def test_no_choice_when_fewer_seats_are_free_than_the_party() -> None:
    layout = grid(2, 3)
    assert choose_seats(layout, set(range(6)), 1) == []
    assert choose_seats(layout, {0, 1, 2, 3}, 3) == []
    assert choose_seats(layout, set(), 7) == []
    with pytest.raises(ValueError):
        choose_seats(layout, set(), 0)


# -- the bitmap and together ---------------------------------------------------------------


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


def test_together_means_adjacent_in_one_row() -> None:
    layout = grid(2, 5)
    assert together(layout, [1, 2, 3])
    assert together(layout, [3, 1, 2])  # any order
    assert together(layout, [7])
    assert not together(layout, [1, 3])
    assert not together(layout, [1, 2, 2])
    assert not together(layout, [4, 5])  # consecutive ids, different rows
    assert not together(layout, [3, 4, 5, 6])
    assert not together(layout, [])
    sections = layout_of([("A", [("1", 3)]), ("B", [("1", 3)])])
    assert not together(sections, [2, 3])  # across sections


# -- randomized --------------------------------------------------------------------------


def test_random_maps_never_get_taken_or_repeated_seats() -> None:
    rng = random.Random(20241123)
    checked_together = checked_apart = 0
    for _ in range(400):
        layout = layout_of(
            [
                (f"S{s}", [(str(r), rng.randint(1, 20)) for r in range(rng.randint(1, 6))])
                for s in range(rng.randint(1, 3))
            ]
        )
        taken = {s for s in range(layout.size) if rng.random() < rng.choice((0.1, 0.5, 0.9))}
        free = layout.size - len(taken)
        party = rng.randint(1, 8)
        choices = choose_seats(layout, taken, party)
        if free < party:
            assert choices == []
            continue
        assert 1 <= len(choices) <= 6
        for choice in choices:
            assert len(choice) == party
            assert len(set(choice)) == party
            assert not set(choice) & taken
            assert all(0 <= s < layout.size for s in choice)
        runs_by_row = [
            [run for run in _runs([s for s in row.seats if s not in taken]) if len(run) >= party]
            for row in layout.rows
        ]
        if any(runs_by_row):
            checked_together += 1
            assert all(together(layout, c) for c in choices)
            first_row = next(i for i, runs in enumerate(runs_by_row) if runs)
            assert layout.row_of(choices[0][0]) is layout.rows[first_row]  # front row first
        else:
            checked_apart += 1
            roomy = [row for row in layout.rows if sum(s not in taken for s in row.seats) >= party]
            if roomy:  # one row if any row has room
                assert all(len({layout.row_of(s) for s in c}) == 1 for c in choices)
                assert layout.row_of(choices[0][0]) is roomy[0]
    assert checked_together > 50 and checked_apart > 50
