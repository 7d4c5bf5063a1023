"""The pre-queue draw: a keyed pseudo-random permutation of the places taken before opening.

Everyone who joins before `opens_at` gets a join index in arrival order. At the opening the
number of pre-queue joiners P is frozen, and a join index j < P stands at position
`permute(j)`. A balanced Feistel network keyed with the sale's secret, cycle-walked onto
[0, P), is a bijection indistinguishable from a uniformly drawn permutation (Luby-Rackoff),
so the draw costs no memory and no bulk shuffle in Redis, and both directions are O(1): the
API maps a ticket to its position, the admitter maps a position back to its ticket.
"""

from __future__ import annotations

import hashlib

ROUNDS = 6


class Permutation:
    def __init__(self, key: bytes, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.key = key
        self.size = size
        bits = max(2, (max(size - 1, 1)).bit_length())
        self._half = (bits + 1) // 2
        self._mask = (1 << self._half) - 1

    def _f(self, rnd: int, value: int) -> int:
        digest = hashlib.blake2b(
            value.to_bytes(8, "big"), key=self.key, digest_size=8, person=rnd.to_bytes(16, "big")
        ).digest()
        return int.from_bytes(digest, "big") & self._mask

    def _encrypt(self, x: int) -> int:
        left, right = x >> self._half, x & self._mask
        for rnd in range(ROUNDS):
            left, right = right, left ^ self._f(rnd, right)
        return (left << self._half) | right

    def _decrypt(self, x: int) -> int:
        left, right = x >> self._half, x & self._mask
        for rnd in reversed(range(ROUNDS)):
            left, right = right ^ self._f(rnd, left), left
        return (left << self._half) | right

    def forward(self, index: int) -> int:
        """Position of join index `index` (0-based) after the draw."""
        self._check(index)
        x = self._encrypt(index)
        while x >= self.size:  # cycle-walking keeps the bijection inside [0, size)
            x = self._encrypt(x)
        return x

    def inverse(self, position: int) -> int:
        """Join index standing at `position`."""
        self._check(position)
        x = self._decrypt(position)
        while x >= self.size:
            x = self._decrypt(x)
        return x

    def _check(self, value: int) -> None:
        if not 0 <= value < self.size:
            raise ValueError(f"{value} is outside [0, {self.size})")


def position_of(join_index: int, prequeue_size: int, key: bytes) -> int:
    """0-based place in line of a join index once the sale has opened."""
    if join_index < prequeue_size:
        return Permutation(key, prequeue_size).forward(join_index)
    return join_index


def join_index_at(position: int, prequeue_size: int, key: bytes) -> int:
    """Inverse of `position_of`."""
    if position < prequeue_size:
        return Permutation(key, prequeue_size).inverse(position)
    return position
