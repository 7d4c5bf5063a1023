"""The harness's invariants (loadtest/harness/invariants.py) on hand-made sales: each check
holds on a sound sale and names what is wrong on a broken one."""

from __future__ import annotations

from loadtest.harness.invariants import (
    Ledger,
    Order,
    RedisStock,
    Seen,
    Stream,
    admission_problems,
    confirmed,
    counters_agree,
    ended_otherwise,
    judge,
    oversold,
    reconcile_problems,
    seats_sold_twice,
    stream_problems,
    stuck,
)

DRAINED = Stream(length=10, lag=0, pending=0)
CLEAN = {"ok": True, "differences": []}


def ledger(*orders: Order, stock: int = 10) -> Ledger:
    held = sum(o.quantity for o in orders if o.status == "held")
    sold = sum(o.quantity for o in orders if o.status == "confirmed")
    return Ledger(stock, held, sold, {o.id: o for o in orders})


def test_a_sound_sale_passes_every_check() -> None:
    book = ledger(
        Order("a", "confirmed", 2, visitor="v1", key="k1"),
        Order("b", "released", 1, "payment declined: card", visitor="v2", key="k2"),
        Order("c", "cancelled", 1, "cancelled and refunded", visitor="v3", key="k3"),
    )
    seen = Seen(
        confirmed=[("a", 2), ("c", 1)],
        ends={"b": ("released", "payment declined"), "c": ("cancelled", "")},
        keys={"k1": {"a"}, "k2": {"b"}, "k3": {"c"}},
    )
    verdict = judge(book, seen, DRAINED, CLEAN, RedisStock(10, 8, 0, 2, 0))
    assert verdict.ok, verdict.problems
    assert (verdict.oversold, verdict.lost_confirmed, verdict.duplicated, verdict.stuck) == (
        0,
        0,
        0,
        0,
    )


def test_oversold_counts_units_beyond_stock_in_either_store() -> None:
    assert oversold(Ledger(10, 3, 7, {})) == 0
    assert oversold(Ledger(10, 4, 8, {})) == 2
    assert oversold(Ledger(10, 0, 5, {}), RedisStock(10, 0, 1, 11)) == 2
    assert oversold(Ledger(10, 0, 5, {}), RedisStock(None, None, None, None)) == 0


def test_a_seat_in_two_confirmed_orders_is_named() -> None:
    book = ledger(
        Order("a", "confirmed", 2, seats=(4, 5)),
        Order("b", "confirmed", 1, seats=(5,)),
        Order("c", "released", 1, seats=(4,)),  # a released seat may be sold again
    )
    assert seats_sold_twice(book) == [5]


def test_a_confirmed_purchase_missing_from_postgresql_is_lost() -> None:
    book = ledger(Order("a", "confirmed", 1), Order("b", "released", 1, "hold expired"))
    found = confirmed(book, Seen(confirmed=[("a", 1), ("b", 1), ("z", 1)]))
    assert found.lost == ["b", "z"]


def test_a_confirmed_purchase_the_shopper_cancelled_must_be_cancelled() -> None:
    book = ledger(Order("a", "cancelled", 1), Order("b", "confirmed", 1))
    seen = Seen(
        confirmed=[("a", 1), ("b", 1)], ends={"a": ("cancelled", ""), "b": ("cancelled", "")}
    )
    assert confirmed(book, seen).lost == ["b"]


def test_a_wrong_quantity_and_an_unseen_confirmation_are_told_apart() -> None:
    book = ledger(Order("a", "confirmed", 2), Order("b", "confirmed", 1))
    found = confirmed(book, Seen(confirmed=[("a", 1)]))
    assert found.wrong_quantity == ["a"]
    assert found.unseen == ["b"]  # paid, but the answer never reached the shopper: allowed
    assert judge(book, Seen(confirmed=[("a", 2)]), DRAINED, CLEAN).ok


def test_one_idempotency_key_that_made_two_orders_is_a_duplicate() -> None:
    book = ledger(Order("a", "confirmed", 1, visitor="v", key="k"))
    assert confirmed(book, Seen(keys={"k": {"a", "b"}})).duplicated == ["k"]
    twice = ledger(
        Order("a", "confirmed", 1, visitor="v", key="k"),
        Order("b", "confirmed", 1, visitor="v", key="k"),
    )
    assert confirmed(twice, Seen()).duplicated == ["k"]
    other_shopper = ledger(
        Order("a", "confirmed", 1, visitor="v", key="k"),
        Order("b", "confirmed", 1, visitor="w", key="k"),
    )
    assert confirmed(other_shopper, Seen()).duplicated == []


def test_orders_not_final_are_stuck() -> None:
    assert stuck(ledger(Order("a", "held", 1), Order("b", "confirmed", 1))) == ["a"]
    assert stuck(ledger(Order("a", "failed", 1), Order("b", "cancelled", 1))) == []


def test_orders_that_ended_otherwise_than_told() -> None:
    book = ledger(
        Order("a", "released", 1, "hold expired"),
        Order("b", "released", 1, "payment declined: no"),
    )
    seen = Seen(
        ends={
            "a": ("released", "payment declined"),
            "b": ("released", "payment declined"),
            "c": ("released", ""),
        }
    )
    assert ended_otherwise(book, seen) == ["a", "c"]


def test_inventory_counters_must_match_the_orders() -> None:
    assert counters_agree(ledger(Order("a", "confirmed", 2), Order("b", "held", 1))) == []
    assert counters_agree(Ledger(10, 0, 3, {"a": Order("a", "confirmed", 2)})) == [
        "sold 3 != 2 units confirmed"
    ]


def test_the_stream_must_be_drained_and_dead_letters_explained() -> None:
    assert stream_problems(DRAINED) == []
    assert stream_problems(Stream(10, 2, 1)) == [
        "2 stream entries never read",
        "1 stream entries read but not acknowledged",
    ]
    explained = Stream(10, 0, 0, ({"order": "a", "dead_reason": "malformed", "dead_entry": "1-0"},))
    assert stream_problems(explained, ledger(Order("a", "released", 1))) == []
    assert stream_problems(Stream(10, 0, 0, ({"dead_entry": "1-0"},))) == [
        "dead letter 1-0 without a reason"
    ]
    held = ledger(Order("a", "held", 1))
    assert stream_problems(explained, held) == ["dead letter for order a, still held in PostgreSQL"]


def test_reconcile_differences_are_problems() -> None:
    assert reconcile_problems(CLEAN) == []
    assert reconcile_problems(None) == ["no reconcile report"]
    assert reconcile_problems({"ok": False, "differences": ["sold: redis 3, postgres 2"]}) == [
        "reconcile: sold: redis 3, postgres 2"
    ]


def test_admission_in_queue_order() -> None:
    batches = [(100, 3, 2, 1), (200, 5, 2, 0)]  # places 0-2 (one skipped), then 3-4
    assert admission_problems(batches, [0, 2, 3, 4], 5, told_admitted_positions=[0, 3]) == []


def test_admission_ahead_of_the_line_is_caught() -> None:
    batches = [(100, 3, 2, 1)]
    # place 4 admitted although the frontier stopped at 3, and place 1 skipped by the count
    problems = admission_problems(batches, [0, 4], 3)
    assert problems == [
        "batch at 100: 1 admitted places in [0, 3), the batch says 2",
        "1 admitted places beyond the last frontier",
    ]
    assert admission_problems([(100, 4, 2, 1)], [0, 1], 4)[0].startswith(
        "batch at 100: frontier 4 != 0 + 2 admitted + 1 skipped"
    )
    assert admission_problems(batches, [0, 1], 3, told_admitted_positions=[2]) == [
        "1 shoppers told 'admitted' stand on places not admitted"
    ]
    assert admission_problems(batches, [0, 1], 7) == [
        "the batches end at 3, the room's frontier is 7"
    ]


def test_judge_names_every_broken_invariant() -> None:
    book = Ledger(
        2,
        1,
        2,
        {
            "a": Order("a", "confirmed", 1, seats=(1,)),
            "b": Order("b", "confirmed", 1, seats=(1,)),
            "c": Order("c", "held", 1),
        },
    )
    verdict = judge(
        book,
        Seen(confirmed=[("z", 1)], keys={"k": {"a", "b"}}),
        Stream(3, 1, 0),
        {"ok": False, "differences": ["held: redis 0, postgres 1"]},
    )
    assert not verdict.ok
    assert (verdict.oversold, verdict.seats_twice, verdict.lost_confirmed) == (1, 1, 1)
    assert (verdict.duplicated, verdict.stuck) == (1, 1)
    assert "1 stream entries never read" in verdict.problems
    assert "reconcile: held: redis 0, postgres 1" in verdict.problems
