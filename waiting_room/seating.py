"""Seat maps and seat choice: pure functions over a layout and the set of taken seats.

Seats are numbered 0..stock-1 in map order (section, row, seat), and that number is the
seat's id everywhere: a bit in Redis, a row in `order_seats`. Choosing is done here in
Python, not in Lua; the hold script then claims the chosen seats all-or-nothing, so a race
lost to another shopper is simply retried with the next best choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    first: int  # seat id of the row's first seat
    labels: tuple[str, ...]

    @property
    def seats(self) -> range:
        return range(self.first, self.first + len(self.labels))


@dataclass(frozen=True)
class Layout:
    rows: tuple[Row, ...]

    @classmethod
    def from_seat_map(cls, seat_map: dict[str, Any]) -> Layout:
        rows = []
        next_id = 0
        for section in seat_map["sections"]:
            for row in section["rows"]:
                labels = tuple(str(x) for x in row["seats"])
                rows.append(Row(str(section["name"]), str(row["name"]), next_id, labels))
                next_id += len(labels)
        return cls(tuple(rows))

    @cached_property
    def size(self) -> int:
        return sum(len(r.labels) for r in self.rows)

    @cached_property
    def _row_of(self) -> list[int]:
        owner = []
        for index, row in enumerate(self.rows):
            owner.extend([index] * len(row.labels))
        return owner

    def row_of(self, seat: int) -> Row:
        return self.rows[self._row_of[seat]]

    def label(self, seat: int) -> str:
        row = self.row_of(seat)
        return f"{row.section} / row {row.name} / seat {row.labels[seat - row.first]}"

    def describe(self, seat: int) -> dict[str, Any]:
        row = self.row_of(seat)
        return {
            "id": seat,
            "section": row.section,
            "row": row.name,
            "seat": row.labels[seat - row.first],
        }

    def find(self, section: str, row: str, seat: str) -> int | None:
        for r in self.rows:
            if r.section == section and r.name == row and seat in r.labels:
                return r.first + r.labels.index(seat)
        return None


def _runs(free: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive seat ids."""
    runs: list[list[int]] = []
    for seat in free:
        if runs and runs[-1][-1] + 1 == seat:
            runs[-1].append(seat)
        else:
            runs.append([seat])
    return runs


def choose_seats(
    layout: Layout, taken: set[int] | frozenset[int], party: int, alternatives: int = 6
) -> list[list[int]]:
    """Up to `alternatives` seat choices for a party, best first.

    Together in one row whenever any row has `party` adjacent free seats (front rows first,
    the run's middle preferred so the row does not fragment at both ends); otherwise best
    available: the fewest rows, front first, with the tightest spread. Empty when fewer than
    `party` seats are free.
    """
    if party < 1:
        raise ValueError("party must be at least 1")
    together: list[list[int]] = []
    free_by_row: list[list[int]] = []
    for row in layout.rows:
        free = [s for s in row.seats if s not in taken]
        free_by_row.append(free)
        for run in _runs(free):
            if len(run) >= party:
                # several placements per run, centre of the run first
                middle = (len(run) - party) / 2
                starts = sorted(range(len(run) - party + 1), key=lambda i: abs(i - middle))
                together.extend(run[i : i + party] for i in starts[:2])
        if len(together) >= alternatives:
            return together[:alternatives]
    if together:
        return together
    if sum(len(f) for f in free_by_row) < party:
        return []
    choices: list[list[int]] = []
    # one row with enough free seats, tightest window of free seats first
    for free in free_by_row:
        if len(free) >= party:
            windows = sorted(
                (free[i + party - 1] - free[i], i) for i in range(len(free) - party + 1)
            )
            choices.append(free[windows[0][1] : windows[0][1] + party])
        if len(choices) >= alternatives:
            return choices
    if choices:
        return choices
    # spill over consecutive rows, front first
    for start in range(len(free_by_row)):
        picked: list[int] = []
        for free in free_by_row[start:]:
            picked.extend(free[: party - len(picked)])
            if len(picked) == party:
                choices.append(picked)
                break
        if len(choices) >= alternatives:
            break
    return choices


def taken_from_bitmap(bitmap: bytes | None, size: int) -> set[int]:
    """Seat ids whose bit is set in a Redis bitmap (bit 0 is the high bit of byte 0)."""
    taken: set[int] = set()
    if not bitmap:
        return taken
    for byte_index, byte in enumerate(bitmap):
        if not byte:
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                seat = byte_index * 8 + bit
                if seat < size:
                    taken.add(seat)
    return taken


def together(layout: Layout, seats: Iterable[int]) -> bool:
    """True when the seats are adjacent in one row."""
    ordered = sorted(seats)
    if not ordered:
        return False
    row = layout.row_of(ordered[0])
    return (
        all(layout.row_of(s) == row for s in ordered)
        and ordered[-1] - ordered[0] == len(ordered) - 1
    )
