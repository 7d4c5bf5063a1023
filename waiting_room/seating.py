"""Seat maps: a venue's layout, seat ids, labels, and the Redis bitmap of taken seats.

Seats are numbered 0..stock-1 in map order (section, row, seat), and that number is the
seat's id everywhere: a bit in Redis, a row in `order_seats`. Where a party sits is decided
inside the hold script (lua/seating.lua), on the bitmap as it is when the seats are claimed:
chosen here from a copy read earlier, the seats could go to another shopper first, and a
party could end up apart while adjacent seats were free. This module gives that script the
venue's rows (`Layout.rows_argument`).
"""

from __future__ import annotations

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

    @cached_property
    def rows_argument(self) -> str:
        """The rows front to back as lua/seating.lua takes them: runs of rows of equal length,
        `"25*40,30*10"` (most venues are a few such runs, so the hold script's argument stays
        short)."""
        runs: list[list[int]] = []
        for row in self.rows:
            length = len(row.labels)
            if runs and runs[-1][0] == length:
                runs[-1][1] += 1
            else:
                runs.append([length, 1])
        return ",".join(f"{length}*{count}" for length, count in runs)

    def find(self, section: str, row: str, seat: str) -> int | None:
        for r in self.rows:
            if r.section == section and r.name == row and seat in r.labels:
                return r.first + r.labels.index(seat)
        return None


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
