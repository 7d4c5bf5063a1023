"""Where a party sits: lua/seating.lua's choose_seats, the one implementation of seat choice,
run alone on the real Redis (the hold script runs the same text in front of its own).

It is a pure function of a taken-seats bitmap, the venue's rows and the party's size, so each
case hands it those and reads the seats back; the randomized test checks every rule of the
policy on hundreds of venues, including rows that do not start on a byte boundary and bitmaps
shorter than the venue."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from redis.asyncio import Redis

from flashsale.waiting_room.sale import parse_seat_map
from flashsale.waiting_room.scripts import source
from flashsale.waiting_room.seating import Layout

Choose = Callable[[Layout, Iterable[int], int], Awaitable[list[int]]]
CALL = "\nreturn choose_seats(ARGV[1], ARGV[2], tonumber(ARGV[3]))"


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


def bitmap(taken: Iterable[int]) -> bytes:
    """What SETBIT makes of the taken seats: no longer than the last taken seat needs."""
    buffer = bytearray()
    for seat in taken:
        while len(buffer) <= seat // 8:
            buffer.append(0)
        buffer[seat // 8] |= 0x80 >> (seat % 8)
    return bytes(buffer)


@pytest.fixture
async def choose(raw_redis: Redis) -> AsyncIterator[Choose]:
    sha = await raw_redis.script_load(source("seating") + CALL)

    async def run(layout: Layout, taken: Iterable[int], party: int) -> list[int]:
        answer = await raw_redis.evalsha(sha, 0, bitmap(taken), layout.rows_argument, party)
        return [int(s) for s in answer.decode().split(",") if s]

    yield run


def runs(free: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive seat ids."""
    found: list[list[int]] = []
    for seat in free:
        if found and found[-1][-1] + 1 == seat:
            found[-1].append(seat)
        else:
            found.append([seat])
    return found


# -- together ------------------------------------------------------------------------------


async def test_an_empty_row_seats_a_party_in_its_centre_front_row_first(choose: Choose) -> None:
    layout = grid(2, 10)
    # the centre, at a multiple of the party's size from the row's start
    assert await choose(layout, set(), 4) == [4, 5, 6, 7]
    assert await choose(layout, set(), 2) == [4, 5]
    assert await choose(layout, set(), 3) == [3, 4, 5]
    assert await choose(layout, set(), 1) == [5]
    assert await choose(layout, set(), 10) == list(range(10))
    assert await choose(layout, range(10), 2) == [14, 15]
    assert await choose(layout, set(), 11) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # no row: apart


async def test_parties_of_one_size_fill_a_row_without_stranding_a_seat(choose: Choose) -> None:
    for length, party in ((12, 2), (20, 2), (12, 3), (12, 4), (21, 3), (25, 5)):
        layout = grid(1, length)
        taken: set[int] = set()
        for _ in range(length // party):
            seats = await choose(layout, taken, party)
            assert seats[-1] - seats[0] == party - 1, (length, party, seats, sorted(taken))
            taken |= set(seats)
        assert len(taken) == length - length % party


async def test_a_party_sits_flush_against_its_run_so_the_rest_stays_in_one_piece(
    choose: Choose,
) -> None:
    layout = grid(1, 12)
    # free: 0-4 and 7-11; the run's end nearer the row's centre (5.5) is taken first
    assert await choose(layout, {5, 6}, 2) == [3, 4]
    assert await choose(layout, {3, 4, 5, 6}, 2) == [1, 2]  # 0-2 is the shortest that fits
    assert await choose(layout, {0, 1, 2, 3, 4, 5, 6}, 2) == [7, 8]
    # pairs one after another: from the centre outwards, each beside the last
    taken: set[int] = set()
    pairs = []
    for _ in range(6):
        pairs.append(await choose(layout, taken, 2))
        taken |= set(pairs[-1])
    assert pairs == [[6, 7], [8, 9], [10, 11], [4, 5], [2, 3], [0, 1]]  # shortest run first
    assert await choose(layout, taken, 1) == []
    # a lone seat left by others goes to a single shopper before any run is broken into
    assert await choose(layout, {0, 2, 3, 4}, 1) == [1]


async def test_the_shortest_run_that_fits_keeps_long_runs_for_large_parties(
    choose: Choose,
) -> None:
    layout = grid(1, 20)
    taken = {3, 4, 10, 11}  # free runs: 0-2 (3), 5-9 (5), 12-19 (8)
    assert await choose(layout, taken, 3) == [0, 1, 2]
    assert await choose(layout, taken, 4) == [6, 7, 8, 9]
    assert await choose(layout, taken, 6) == [12, 13, 14, 15, 16, 17]
    assert await choose(layout, taken, 1) == [2]
    # two runs as short (0-1 and 11-12): the one nearer the row's centre (9.5)
    assert await choose(grid(1, 20), {2, 3, 4, 5, 6, 7, 8, 9, 10, 13}, 2) == [11, 12]


async def test_together_in_a_later_row_beats_apart_in_a_front_row(choose: Choose) -> None:
    layout = grid(3, 6)
    # front row free: 0, 2, 4 (apart); second row free: 8, 9, 10 (a run of three)
    assert await choose(layout, {1, 3, 5, 6, 7, 11}, 3) == [8, 9, 10]
    # a run of exactly the party's size at the row's end is used
    assert await choose(layout, set(range(12)) | {12, 13, 14}, 3) == [15, 16, 17]


async def test_rows_of_different_lengths_and_sections(choose: Choose) -> None:
    layout = layout_of([("Stalls", [("A", 3), ("B", 5)]), ("Balcony", [("1", 7), ("2", 7)])])
    assert layout.rows_argument == "3*1,5*1,7*2"
    assert await choose(layout, set(), 4) == [3, 4, 5, 6]  # row A is too short
    assert await choose(layout, {4}, 4) == [8, 9, 10, 11]  # B's longest run is 5-7
    # across a row's end is not together: B's last seats and the balcony's first
    assert await choose(layout, set(range(6)) | set(range(11, 22)), 3) == [8, 9, 10]


# -- apart ---------------------------------------------------------------------------------


async def test_best_available_stays_in_one_row_when_no_run_is_long_enough(
    choose: Choose,
) -> None:
    layout = grid(2, 8)
    # row 1 free: 0, 2, 4, 6; row 2 free: 9, 12, 15 (no adjacent pair anywhere)
    taken = {1, 3, 5, 7, 8, 10, 11, 13, 14}
    assert await choose(layout, taken, 3) == [0, 2, 4]
    assert await choose(layout, taken, 4) == [0, 2, 4, 6]
    assert await choose(layout, taken | {0}, 4) == [2, 4, 6, 9]  # no row has 4: spill


async def test_the_tightest_window_in_a_row(choose: Choose) -> None:
    layout = grid(1, 12)
    taken = set(range(12)) - {0, 5, 7, 9, 11}
    assert await choose(layout, taken, 3) == [5, 7, 9]  # spread 4 beats 0-5-7 (spread 7)


async def test_spill_over_rows_only_when_no_row_has_room(choose: Choose) -> None:
    layout = grid(3, 4)
    taken = {1, 2, 5, 6, 9, 10}  # two free seats per row, none adjacent
    assert await choose(layout, taken, 3) == [0, 3, 4]
    assert await choose(layout, taken, 6) == [0, 3, 4, 7, 8, 11]
    assert await choose(layout, taken, 7) == []


async def test_nothing_when_fewer_seats_are_free_than_the_party(choose: Choose) -> None:
    layout = grid(2, 3)
    assert await choose(layout, range(6), 1) == []
    assert await choose(layout, {0, 1, 2, 3}, 3) == []
    assert await choose(layout, set(), 7) == []
    # seats past the bitmap's end are free: SETBIT never wrote them
    assert await choose(grid(4, 25), set(), 25) == list(range(25))
    assert await choose(grid(4, 25), range(99), 1) == [99]


# -- randomized ------------------------------------------------------------------------------


async def test_random_venues_follow_every_rule(choose: Choose) -> None:
    rng = random.Random(20241123)
    seen: set[str] = set()
    for _ in range(500):
        layout = layout_of(
            [
                (f"S{s}", [(str(r), rng.randint(1, 23)) for r in range(rng.randint(1, 8))])
                for s in range(rng.randint(1, 3))
            ]
        )
        density = rng.choice((0.05, 0.3, 0.6, 0.9, 0.97))
        taken = {s for s in range(layout.size) if rng.random() < density}
        if rng.random() < 0.3:  # a block of full rows in front, as a filling venue has
            taken |= set(range(rng.randint(0, layout.size)))
        party = rng.randint(1, 9)
        chosen = await choose(layout, taken, party)
        free = [s for s in range(layout.size) if s not in taken]
        if len(free) < party:
            assert chosen == []
            seen.add("none")
            continue
        assert len(chosen) == party == len(set(chosen))
        assert chosen == sorted(chosen)
        assert not set(chosen) & taken
        assert all(0 <= s < layout.size for s in chosen)
        by_row = [[s for s in row.seats if s not in taken] for row in layout.rows]
        fitting = [[r for r in runs(f) if len(r) >= party] for f in by_row]
        if any(fitting):
            seen.add("together")
            front = next(i for i, found in enumerate(fitting) if found)
            row = layout.rows[front]
            assert layout.row_of(chosen[0]) is row and chosen[-1] - chosen[0] == party - 1
            run = next(r for r in fitting[front] if chosen[0] in r)
            assert len(run) == min(len(r) for r in fitting[front])  # the shortest that fits
            if len(run) == len(row.labels):  # an empty row: the centre, at a multiple of party
                offset, length = chosen[0] - row.first, len(run)
                assert offset % party == 0
                assert abs(2 * offset + party - length) == min(
                    abs(2 * k + party - length) for k in range(0, length - party + 1, party)
                )
            else:  # flush against one end of its run
                assert chosen[0] == run[0] or chosen[-1] == run[-1]
            continue
        roomy = [i for i, f in enumerate(by_row) if len(f) >= party]
        if roomy:
            seen.add("one row")
            seats = by_row[roomy[0]]
            spreads = [seats[i + party - 1] - seats[i] for i in range(len(seats) - party + 1)]
            best = spreads.index(min(spreads))
            assert chosen == seats[best : best + party]
        else:
            seen.add("spill")
            assert chosen == free[:party]
    assert seen == {"none", "together", "one row", "spill"}
