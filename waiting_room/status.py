"""What a waiter is told: pure functions of the room's state, the waiter's place and the clock.

Kept free of I/O so every rule (states, estimates, poll pacing) is tested alone and the poll
path stays a computation over a cached view of the room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from flashsale.waiting_room.keys import HEARTBEAT_SLICES


class State(StrEnum):
    NOT_OPEN = "not_open"
    WAITING = "waiting"
    ADMITTED = "admitted"
    EXPIRED = "expired"
    SOLD_OUT = "sold_out"
    CLOSED = "closed"


# Rate measurements older than this are ignored: admission speed changes through a sale.
RATE_WINDOW_MS = 60_000
MIN_POLL_S = 1.0
MAX_POLL_S = 30.0


@dataclass(frozen=True)
class RoomView:
    """A snapshot of one sale's room as stored in its meta hash and batch list."""

    opens_ms: int
    closes_ms: int
    batch_size: int
    interval_ms: int
    max_active: int
    admission_ttl_ms: int
    abandon_ms: int
    shuffle_key: bytes
    opened: bool = False
    prequeue: int = 0  # P: pre-queue size, frozen at the opening
    pre: int = 0  # pre-queue joiners so far (before the opening)
    seq: int = 0  # next join index handed out after the opening
    frontier: int = 0  # positions below this have had their turn
    next_batch_ms: int = 0
    sold_out: bool = False
    closed: bool = False
    admitted_total: int = 0
    skipped_total: int = 0
    batches: tuple[tuple[int, int], ...] = field(default=())  # (t_ms, frontier), newest first
    held_units: int = 0  # units in shoppers' holds: they return to stock if not paid
    identity_required: bool = False  # places are per signed-in shopper (the shop's JWT)
    pow_difficulty: int = 0  # bits a new anonymous place costs now (admitter may raise it)

    @classmethod
    def from_redis(cls, meta: dict[str, str], batches: list[str], held_units: int = 0) -> RoomView:
        def i(name: str, default: int = 0) -> int:
            return int(meta.get(name) or default)

        samples = []
        for item in batches:
            t, frontier, *_ = item.split(":")
            samples.append((int(t), int(frontier)))
        return cls(
            opens_ms=i("opens_ms"),
            closes_ms=i("closes_ms"),
            batch_size=i("batch_size", 1),
            interval_ms=i("interval_ms", 1000),
            max_active=i("max_active", 1),
            admission_ttl_ms=i("admission_ttl_ms", 1),
            abandon_ms=i("abandon_ms", 1),
            shuffle_key=bytes.fromhex(meta.get("shuffle_key", "")),
            opened=meta.get("opened") == "1",
            prequeue=i("P"),
            pre=i("pre"),
            seq=i("seq"),
            frontier=i("frontier"),
            next_batch_ms=i("next_batch_ms"),
            sold_out=meta.get("sold_out") == "1",
            closed=meta.get("closed") == "1",
            admitted_total=i("admitted_total"),
            skipped_total=i("skipped_total"),
            batches=tuple(samples),
            held_units=held_units,
            identity_required=meta.get("identity") == "1",
            pow_difficulty=i("pow_bits"),
        )

    @property
    def proof_required(self) -> bool:
        """Whether a new place needs a proof of work: anonymous sales that price joins (a sale
        requiring identity gives one place per shopper and needs none)."""
        return self.pow_difficulty > 0 and not self.identity_required

    def is_closed(self, now_ms: int) -> bool:
        return self.closed or now_ms >= self.closes_ms

    @property
    def waiting(self) -> int:
        """Places not yet reached (abandoned ones included: they are not known until reached)."""
        return max(0, self.seq - self.frontier) if self.opened else self.pre


@dataclass(slots=True)  # not frozen: built on every poll, 3x as fast
class Outcome:
    """What happened to a place the frontier has passed."""

    admitted: bool
    active_until_ms: int | None  # admission still active until then; None when over


@dataclass(slots=True)  # not frozen: built on every poll, 3x as fast
class Status:
    state: State
    position: int | None = None  # 1-based place in line, known from the opening on
    ahead: int | None = None
    waiting: int = 0
    eta_seconds: float | None = None
    poll_after_seconds: float | None = None
    admitted_until_ms: int | None = None
    message: str = ""


def measured_rate(
    batches: tuple[tuple[int, int], ...], now_ms: int, interval_ms: int = 0
) -> float | None:
    """Places passed per second over the recent window, from (t_ms, frontier) samples.

    The time since the newest batch counts only once the next batch is overdue: between two
    regular batches the line is not slower, but a stalled room's rate must decay."""
    recent = [b for b in batches if now_ms - b[0] <= RATE_WINDOW_MS]
    if len(recent) < 2:
        return None
    (t_new, f_new), (t_old, f_old) = recent[0], recent[-1]
    span_ms = (t_new - t_old) + max(0, now_ms - t_new - interval_ms)
    if span_ms < 1000:
        return None
    return max(f_new - f_old, 0) * 1000.0 / span_ms


def nominal_rate(view: RoomView) -> float:
    """Places per second the admission settings allow when nothing limits them."""
    return view.batch_size * 1000.0 / max(view.interval_ms, 1)


def estimate_wait(ahead: int, rate: float | None, fallback_rate: float) -> float:
    """Seconds until a waiter `ahead` places back reaches the front."""
    per_second = rate if rate and rate > 0 else fallback_rate
    return round(ahead / per_second, 1) if per_second > 0 else float("inf")


def poll_interval(
    view: RoomView,
    state: State,
    *,
    ahead: int | None,
    eta: float | None,
    now_ms: int,
    spread: float,
    idle: bool = False,
) -> float | None:
    """Seconds until the next poll: rare when far back, often near the front, never so rare
    that the waiter looks abandoned. `spread` in [0, 1) staggers a crowd's polls."""
    # stay inside the abandonment window: polls at most 3/4 of a window apart are always seen
    ceiling = max(
        MIN_POLL_S,
        min(MAX_POLL_S, view.abandon_ms / 1000 * (HEARTBEAT_SLICES - 1) / HEARTBEAT_SLICES * 0.8),
    )
    if state is State.NOT_OPEN:
        until_open = (view.opens_ms - now_ms) / 1000
        if until_open > ceiling:
            return round(ceiling, 1)
        # everyone wakes just after the opening, spread out, yet never so late that the
        # poll before it counts as absence
        return round(min(ceiling, max(until_open, 0) + 0.2 + min(2.0, ceiling / 2) * spread), 1)
    if state is not State.WAITING:
        return None
    if idle:  # nothing will move soon: poll as rarely as presence allows
        return round(ceiling * (0.9 + 0.1 * spread), 1)
    if ahead is not None and ahead <= view.batch_size:
        return MIN_POLL_S
    wanted = (eta or 0) / 5
    # the spread is applied after the clamp, so clamp again: never below MIN_POLL_S
    # stagger downwards only: a poll never comes later than presence allows
    return max(MIN_POLL_S, round(min(ceiling, max(MIN_POLL_S, wanted)) * (0.8 + 0.2 * spread), 1))


def decide(
    view: RoomView,
    *,
    position: int | None,
    outcome: Outcome | None,
    now_ms: int,
    spread: float = 0.0,
) -> Status:
    """The status of a waiter at 0-based `position` (None before the opening).

    `outcome` must be given when the frontier has passed the position.
    """
    waiting = view.waiting
    if view.is_closed(now_ms):
        return Status(State.CLOSED, waiting=waiting, message="The sale has closed.")
    # an admitted shopper stays admitted while sold-out stock may still come back from holds
    may_return = not view.sold_out or view.held_units > 0
    if outcome is not None and outcome.active_until_ms is not None and may_return:
        message = (
            "It is your turn."
            if not view.sold_out
            else "It is your turn, but everything is in other shoppers' baskets right now: "
            "items not paid for come back."
        )
        return Status(
            State.ADMITTED,
            position=None if position is None else position + 1,
            ahead=0,
            waiting=waiting,
            admitted_until_ms=outcome.active_until_ms,
            message=message,
        )
    if view.sold_out:
        if view.held_units > 0 and outcome is None and view.opened and position is not None:
            # stock sits in unpaid holds: keep the place (and keep polling) in case it returns
            return Status(
                State.SOLD_OUT,
                position=position + 1,
                ahead=max(0, position - view.frontier),
                waiting=waiting,
                poll_after_seconds=poll_interval(
                    view,
                    State.WAITING,
                    ahead=None,
                    eta=None,
                    now_ms=now_ms,
                    spread=spread,
                    idle=True,
                ),
                message=f"Sold out for now: {view.held_units} held in other "
                "shoppers' baskets may come back if not paid.",
            )
        return Status(State.SOLD_OUT, waiting=waiting, message="Everything has been sold.")
    if not view.opened or position is None:
        poll = poll_interval(
            view, State.NOT_OPEN, ahead=None, eta=None, now_ms=now_ms, spread=spread
        )
        return Status(
            State.NOT_OPEN,
            waiting=waiting,
            poll_after_seconds=poll,
            message="You are in the pre-queue: places are drawn at random at the opening.",
        )
    if outcome is not None:
        message = (
            "Your admission has ended."
            if outcome.admitted
            else "Your turn came while you were away, so it was given to the next person."
        )
        return Status(
            State.EXPIRED, position=position + 1, ahead=0, waiting=waiting, message=message
        )
    ahead = max(0, position - view.frontier)
    eta = estimate_wait(
        ahead + 1, measured_rate(view.batches, now_ms, view.interval_ms), nominal_rate(view)
    )
    poll = poll_interval(view, State.WAITING, ahead=ahead, eta=eta, now_ms=now_ms, spread=spread)
    return Status(
        State.WAITING,
        position=position + 1,
        ahead=ahead,
        waiting=waiting,
        eta_seconds=eta,
        poll_after_seconds=poll,
        message="You are in line.",
    )
