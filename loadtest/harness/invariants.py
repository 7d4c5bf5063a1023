"""What must hold after any sale, whatever happened during it: pure functions over what was
read from PostgreSQL and Redis (`store.py` reads it) and what the shoppers saw (`crowd.py`
records it). The demo, the spike and the chaos run judge their sales with these, and
tests/unit/test_invariants.py tries each one on hand-made data.

Each check returns what is wrong (ids, counts, sentences); empty means it holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FINAL = frozenset({"confirmed", "released", "failed", "cancelled"})


@dataclass(frozen=True)
class Order:
    """One row of `orders` (with its seats, for a seated sale)."""

    id: str
    status: str
    quantity: int
    reason: str = ""
    seats: tuple[int, ...] = ()
    visitor: str = ""
    key: str | None = None  # the Idempotency-Key of the hold that made it


@dataclass(frozen=True)
class Ledger:
    """A sale as PostgreSQL records it: the inventory row and every order."""

    stock: int
    held: int
    sold: int
    orders: Mapping[str, Order]

    def count(self, status: str, reason: str | None = None) -> int:
        return sum(
            1
            for o in self.orders.values()
            if o.status == status and (reason is None or o.reason.startswith(reason))
        )

    def units(self, status: str) -> int:
        return sum(o.quantity for o in self.orders.values() if o.status == status)


@dataclass(frozen=True)
class RedisStock:
    """The sale's inventory hash in Redis; None fields when the sale is not warm."""

    stock: int | None
    avail: int | None
    held: int | None
    sold: int | None
    open_holds: int = 0


@dataclass(frozen=True)
class Stream:
    """The sale's order stream as the persisters' group sees it, and its dead letters."""

    length: int
    lag: int
    pending: int
    dead: tuple[Mapping[str, str], ...] = ()


@dataclass
class Seen:
    """What the shoppers were told about their orders."""

    confirmed: list[tuple[str, int]] = field(default_factory=list)  # (order, quantity) per "paid"
    # how shoppers saw an order end: order -> (status, start of the reason)
    ends: dict[str, tuple[str, str]] = field(default_factory=dict)
    # each Idempotency-Key sent -> the distinct orders its answers named
    keys: dict[str, set[str]] = field(default_factory=dict)

    def answered(self, key: str, order_id: str) -> None:
        self.keys.setdefault(key, set()).add(order_id)


def oversold(ledger: Ledger, redis: RedisStock | None = None) -> int:
    """Units beyond the stock: sold + held over stock, in PostgreSQL or (when warm) Redis."""
    worst = ledger.sold + ledger.held - ledger.stock
    if redis is not None and redis.stock is not None:
        worst = max(worst, (redis.sold or 0) + (redis.held or 0) - redis.stock)
    return max(0, worst)


def seats_sold_twice(ledger: Ledger) -> list[int]:
    """Seats in more than one confirmed order."""
    counts = Counter(s for o in ledger.orders.values() if o.status == "confirmed" for s in o.seats)
    return sorted(s for s, n in counts.items() if n > 1)


@dataclass(frozen=True)
class Confirmed:
    """How what the shoppers saw confirmed squares with PostgreSQL."""

    lost: list[str]  # seen confirmed (and not cancelled by them), not confirmed in PostgreSQL
    duplicated: list[str]  # Idempotency-Keys that made more than one order
    wrong_quantity: list[str]  # confirmed with another quantity than the shopper was told
    unseen: list[str]  # confirmed in PostgreSQL, though no shopper was told so


def confirmed(ledger: Ledger, seen: Seen) -> Confirmed:
    """Every purchase a shopper saw confirmed is exactly one confirmed order with its
    quantity (or cancelled, when they cancelled it)."""
    cancelled = {o for o, (status, _) in seen.ends.items() if status == "cancelled"}
    lost, wrong = [], []
    told = {order_id for order_id, _ in seen.confirmed}
    for order_id, quantity in seen.confirmed:
        row = ledger.orders.get(order_id)
        want = "cancelled" if order_id in cancelled else "confirmed"
        if row is None or row.status != want:
            lost.append(order_id)
        elif row.quantity != quantity:
            wrong.append(order_id)
    per_key = Counter((o.visitor, o.key) for o in ledger.orders.values() if o.key)
    duplicated = sorted(
        {key for key, orders in seen.keys.items() if len(orders) > 1}
        | {str(key) for (_, key), n in per_key.items() if n > 1}
    )
    unseen = sorted(
        o.id for o in ledger.orders.values() if o.status == "confirmed" and o.id not in told
    )
    return Confirmed(sorted(set(lost)), duplicated, sorted(set(wrong)), unseen)


def ended_otherwise(ledger: Ledger, seen: Seen) -> list[str]:
    """Orders that ended in PostgreSQL otherwise than their shopper was told."""
    return sorted(
        order_id
        for order_id, (status, reason) in seen.ends.items()
        if order_id not in ledger.orders
        or ledger.orders[order_id].status != status
        or not ledger.orders[order_id].reason.startswith(reason)
    )


def stuck(ledger: Ledger) -> list[str]:
    """Orders left in a state that is not final (once the sale has settled)."""
    return sorted(o.id for o in ledger.orders.values() if o.status not in FINAL)


def counters_agree(ledger: Ledger) -> list[str]:
    """The inventory row says what the orders say."""
    problems = []
    if ledger.sold != ledger.units("confirmed"):
        problems.append(f"sold {ledger.sold} != {ledger.units('confirmed')} units confirmed")
    if ledger.held != ledger.units("held"):
        problems.append(f"held {ledger.held} != {ledger.units('held')} units in holds")
    return problems


def stream_problems(stream: Stream, ledger: Ledger | None = None) -> list[str]:
    """The stream is drained (nothing unread, nothing unacknowledged) and each dead letter is
    explained: it carries the persister's reason, and its order (if it names one) ended in
    PostgreSQL anyway or never reached it."""
    problems = []
    if stream.lag:
        problems.append(f"{stream.lag} stream entries never read")
    if stream.pending:
        problems.append(f"{stream.pending} stream entries read but not acknowledged")
    for letter in stream.dead:
        order = letter.get("order", "")
        if not letter.get("dead_reason"):
            problems.append(f"dead letter {letter.get('dead_entry', '?')} without a reason")
        elif ledger and order in ledger.orders and ledger.orders[order].status == "held":
            problems.append(f"dead letter for order {order}, still held in PostgreSQL")
    return problems


def reconcile_problems(report: Mapping[str, Any] | None) -> list[str]:
    """What `reconcile` (GET /admin/sales/{id}/reconcile) found different."""
    if report is None:
        return ["no reconcile report"]
    if report.get("ok"):
        return []
    return [f"reconcile: {d}" for d in report.get("differences") or ["not ok"]]


def admission_problems(
    batches: Iterable[tuple[int, int, int, int]],
    admitted_positions: Sequence[int],
    frontier: int,
    told_admitted_positions: Iterable[int] = (),
) -> list[str]:
    """Admission followed queue order, batch by batch. `batches` are (t_ms, frontier,
    admitted, skipped); `admitted_positions` the 0-based places in line of every admitted
    join index; `told_admitted_positions` the places of shoppers told "admitted". With the
    batches in the order they were cut, each took the places from the previous frontier to
    its own (the frontiers chain), exactly `admitted` of the places in that window are
    admitted, none beyond the last frontier is, and everyone told "admitted" stands on an
    admitted place: nobody was admitted ahead of anyone waiting in front of them."""
    problems = []
    positions = sorted(admitted_positions)
    previous, at = 0, 0
    for t_ms, batch_frontier, admitted, skipped in sorted(batches, key=lambda b: (b[0], b[1])):
        if batch_frontier != previous + admitted + skipped:
            problems.append(
                f"batch at {t_ms}: frontier {batch_frontier} != {previous} + {admitted} "
                f"admitted + {skipped} skipped"
            )
        inside = 0
        while at < len(positions) and positions[at] < batch_frontier:
            inside += positions[at] >= previous
            at += 1
        if inside != admitted:
            problems.append(
                f"batch at {t_ms}: {inside} admitted places in [{previous}, {batch_frontier}), "
                f"the batch says {admitted}"
            )
        previous = batch_frontier
    if len(positions) > at:
        problems.append(f"{len(positions) - at} admitted places beyond the last frontier")
    if previous != frontier:
        problems.append(f"the batches end at {previous}, the room's frontier is {frontier}")
    admitted_set = set(positions)
    wrong = [p for p in told_admitted_positions if p not in admitted_set]
    if wrong:
        problems.append(f"{len(wrong)} shoppers told 'admitted' stand on places not admitted")
    return problems


@dataclass
class Verdict:
    """A sale judged: the counts scripts read and every problem in words."""

    oversold: int
    lost_confirmed: int
    duplicated: int
    wrong_quantity: int
    stuck: int
    seats_twice: int
    confirmed_unseen: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(
    ledger: Ledger,
    seen: Seen,
    stream: Stream,
    reconcile: Mapping[str, Any] | None,
    redis: RedisStock | None = None,
) -> Verdict:
    """Every invariant of a settled sale at once (admission order is judged apart: only a
    room that kept its memory can be)."""
    over = oversold(ledger, redis)
    twice = seats_sold_twice(ledger)
    paid = confirmed(ledger, seen)
    left = stuck(ledger)
    problems = []
    if over:
        problems.append(f"oversold by {over} units")
    if twice:
        problems.append(f"{len(twice)} seats sold twice")
    if paid.lost:
        problems.append(f"{len(paid.lost)} purchases seen confirmed are not confirmed orders")
    if paid.duplicated:
        problems.append(f"{len(paid.duplicated)} Idempotency-Keys made more than one order")
    if paid.wrong_quantity:
        problems.append(f"{len(paid.wrong_quantity)} confirmed with another quantity")
    if left:
        problems.append(f"{len(left)} orders left in a state that is not final")
    problems += counters_agree(ledger)
    problems += stream_problems(stream, ledger)
    problems += reconcile_problems(reconcile)
    return Verdict(
        oversold=over,
        lost_confirmed=len(paid.lost),
        duplicated=len(paid.duplicated),
        wrong_quantity=len(paid.wrong_quantity),
        stuck=len(left),
        seats_twice=len(twice),
        confirmed_unseen=len(paid.unseen),
        problems=problems,
    )
