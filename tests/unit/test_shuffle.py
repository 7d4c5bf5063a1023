"""The pre-queue draw: a keyed permutation that is a bijection, invertible, and key-dependent."""

from __future__ import annotations

import pytest

from flashsale.waiting_room.room import Places
from flashsale.waiting_room.shuffle import Permutation, join_index_at, position_of

KEY = bytes(range(16))
SIZES = sorted(
    set(range(1, 40))
    | {n + d for k in range(1, 12) for n in [2**k] for d in (-1, 0, 1)}
    | {100, 999, 1000, 1001}
)


@pytest.mark.parametrize("size", SIZES)
def test_bijection_and_inverse(size: int) -> None:
    perm = Permutation(KEY, size)
    image = [perm.forward(j) for j in range(size)]
    assert sorted(image) == list(range(size))
    assert [perm.inverse(p) for p in image] == list(range(size))
    assert [perm.forward(perm.inverse(p)) for p in range(size)] == list(range(size))


@pytest.mark.parametrize("size", [-1, -100])
def test_negative_size_rejected(size: int) -> None:
    with pytest.raises(ValueError):
        Permutation(KEY, size)


@pytest.mark.parametrize("value", [-1, 10, 11, 10**9])
def test_out_of_range_rejected(value: int) -> None:
    perm = Permutation(KEY, 10)
    with pytest.raises(ValueError):
        perm.forward(value)
    with pytest.raises(ValueError):
        perm.inverse(value)


def test_empty_permutation_has_no_members() -> None:
    with pytest.raises(ValueError):
        Permutation(KEY, 0).forward(0)


def test_different_keys_give_different_orders() -> None:
    size = 200
    orders = {
        tuple(Permutation(bytes([k]) * 16, size).forward(j) for j in range(size)) for k in range(8)
    }
    assert len(orders) == 8
    assert tuple(range(size)) not in orders  # a shuffle, not the arrival order


def test_same_key_same_order() -> None:
    a = [Permutation(KEY, 500).forward(j) for j in range(500)]
    b = [Permutation(bytes(KEY), 500).forward(j) for j in range(500)]
    assert a == b


def test_order_looks_shuffled() -> None:
    """Loose sanity: early joiners are spread over the line, not kept at the front."""
    size = 1000
    perm = Permutation(KEY, size)
    first_hundred = [perm.forward(j) for j in range(100)]
    assert sum(p < 100 for p in first_hundred) < 40
    assert max(first_hundred) > 500


@pytest.mark.parametrize("prequeue", [0, 1, 2, 7, 64, 65])
def test_position_of_and_join_index_at(prequeue: int) -> None:
    for j in range(prequeue):
        p = position_of(j, prequeue, KEY)
        assert 0 <= p < prequeue
        assert join_index_at(p, prequeue, KEY) == j
    assert sorted(position_of(j, prequeue, KEY) for j in range(prequeue)) == list(range(prequeue))
    for j in range(prequeue, prequeue + 50):  # joined after the opening: first come first served
        assert position_of(j, prequeue, KEY) == j
        assert join_index_at(j, prequeue, KEY) == j
    assert position_of(10**9, prequeue, KEY) == 10**9


def test_places_of_a_room_are_the_permutation_worked_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The poll's memo of the pre-queue draw (waiting_room/room.py) gives the permutation's
    places, and works each one out once however often its waiter polls."""
    size = 5000
    expected = [Permutation(KEY, size).forward(j) for j in range(size)]
    forward = Permutation.forward
    calls = []

    def counted(self: Permutation, index: int) -> int:
        calls.append(index)
        return forward(self, index)

    monkeypatch.setattr(Permutation, "forward", counted)
    places = Places(KEY, size)
    for _ in range(3):
        assert [places.of(j) for j in range(size)] == expected
    assert sorted(calls) == list(range(size))
    with pytest.raises(ValueError):
        places.of(-1)
