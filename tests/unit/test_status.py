"""What a waiter is told: decide(), the wait estimate and poll pacing, as pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flashsale.waiting_room.status import (
    MAX_POLL_S,
    MIN_POLL_S,
    RATE_WINDOW_MS,
    Outcome,
    RoomView,
    State,
    decide,
    estimate_wait,
    measured_rate,
    nominal_rate,
    poll_interval,
)

T0 = 1_900_000_000_000  # opening, ms
HOUR_MS = 3_600_000


def view(**overrides: object) -> RoomView:
    """An opened room: 1000 joined, frontier at 100, batches of 10 every second."""
    values: dict[str, object] = dict(
        opens_ms=T0,
        closes_ms=T0 + HOUR_MS,
        batch_size=10,
        interval_ms=1000,
        max_active=50,
        admission_ttl_ms=600_000,
        abandon_ms=60_000,
        shuffle_key=b"k" * 16,
        opened=True,
        prequeue=200,
        pre=200,
        seq=1000,
        frontier=100,
        next_batch_ms=T0,
    )
    values.update(overrides)
    return RoomView(**values)  # type: ignore[arg-type]


def not_open(**overrides: object) -> RoomView:
    return view(opened=False, prequeue=0, pre=37, seq=0, frontier=0, **overrides)


NOW = T0 + 60_000
ACTIVE = Outcome(admitted=True, active_until_ms=NOW + 1000)
ENDED = Outcome(admitted=True, active_until_ms=None)
SKIPPED = Outcome(admitted=False, active_until_ms=None)


# -- decide ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [None, ACTIVE, ENDED, SKIPPED])
@pytest.mark.parametrize("position", [None, 5, 500])
@pytest.mark.parametrize("sold_out", [False, True])
@pytest.mark.parametrize("opened", [False, True])
def test_closed_beats_everything(
    outcome: Outcome | None, position: int | None, sold_out: bool, opened: bool
) -> None:
    for room, now in (
        (view(closed=True, sold_out=sold_out, opened=opened), NOW),
        (view(sold_out=sold_out, opened=opened), T0 + HOUR_MS),  # closes_at
        (view(sold_out=sold_out, opened=opened), T0 + HOUR_MS + 1),
    ):
        status = decide(room, position=position, outcome=outcome, now_ms=now)
        assert status.state is State.CLOSED
        assert status.poll_after_seconds is None  # stop polling
        assert status.waiting == room.waiting
        assert status.message


def test_just_before_closing_is_not_closed() -> None:
    status = decide(view(), position=500, outcome=None, now_ms=T0 + HOUR_MS - 1)
    assert status.state is State.WAITING


@pytest.mark.parametrize("outcome", [None, ENDED, SKIPPED, ACTIVE])
@pytest.mark.parametrize("position", [None, 5, 500])
def test_sold_out(outcome: Outcome | None, position: int | None) -> None:
    status = decide(view(sold_out=True), position=position, outcome=outcome, now_ms=NOW)
    assert status.state is State.SOLD_OUT
    assert status.poll_after_seconds is None
    assert status.admitted_until_ms is None


def test_sold_out_before_opening() -> None:
    status = decide(not_open(sold_out=True), position=None, outcome=None, now_ms=T0 - 5000)
    assert status.state is State.SOLD_OUT


def test_admitted() -> None:
    status = decide(view(), position=42, outcome=ACTIVE, now_ms=NOW)
    assert status.state is State.ADMITTED
    assert status.position == 43  # 1-based
    assert status.ahead == 0
    assert status.admitted_until_ms == ACTIVE.active_until_ms
    assert status.poll_after_seconds is None
    assert status.waiting == 900


@pytest.mark.parametrize(("outcome", "words"), [(SKIPPED, "away"), (ENDED, "ended")])
def test_expired(outcome: Outcome, words: str) -> None:
    status = decide(view(), position=42, outcome=outcome, now_ms=NOW)
    assert status.state is State.EXPIRED
    assert status.position == 43
    assert status.ahead == 0
    assert status.admitted_until_ms is None
    assert status.poll_after_seconds is None
    assert words in status.message


@pytest.mark.parametrize("spread", [0.0, 0.5, 0.99])
def test_not_open(spread: float) -> None:
    room = not_open()
    status = decide(room, position=None, outcome=None, now_ms=T0 - 10_000, spread=spread)
    assert status.state is State.NOT_OPEN
    assert status.position is None and status.ahead is None and status.eta_seconds is None
    assert status.waiting == 37  # the pre-queue so far
    assert status.poll_after_seconds is not None and status.poll_after_seconds > 10


def test_not_open_when_position_unknown_in_opened_room() -> None:
    status = decide(view(), position=None, outcome=None, now_ms=NOW)
    assert status.state is State.NOT_OPEN


@pytest.mark.parametrize(
    ("position", "ahead"), [(100, 0), (101, 1), (109, 9), (110, 10), (500, 400), (999, 899)]
)
def test_waiting_ahead_is_position_minus_frontier(position: int, ahead: int) -> None:
    status = decide(view(), position=position, outcome=None, now_ms=NOW)
    assert status.state is State.WAITING
    assert status.position == position + 1
    assert status.ahead == ahead
    assert status.waiting == 900  # seq - frontier
    # nominal: 10 places a second; the waiter needs ahead + 1 places
    assert status.eta_seconds == pytest.approx((ahead + 1) / 10, abs=0.05)
    assert status.poll_after_seconds is not None and status.poll_after_seconds >= MIN_POLL_S


def test_waiting_uses_measured_rate() -> None:
    # 200 places passed in the last 10 s: 20/s, twice the nominal rate
    room = view(frontier=300, batches=((NOW, 300), (NOW - 10_000, 100)))
    status = decide(room, position=699, outcome=None, now_ms=NOW)
    assert status.ahead == 399
    assert status.eta_seconds == pytest.approx(20.0)


def test_room_waiting_counts() -> None:
    assert view().waiting == 900
    assert view(frontier=2000).waiting == 0
    assert not_open().waiting == 37


# -- rates and estimates ---------------------------------------------------------------------


def test_measured_rate_from_samples() -> None:
    samples = ((NOW, 500), (NOW - 5_000, 300), (NOW - 10_000, 100))
    assert measured_rate(samples, NOW) == pytest.approx(40.0)


def test_measured_rate_decays_when_stalled() -> None:
    samples = ((NOW - 10_000, 300), (NOW - 20_000, 100))
    # the span runs to now, not to the newest sample
    assert measured_rate(samples, NOW) == pytest.approx(10.0)


def test_measured_rate_not_halved_between_batches() -> None:
    # batches of 100 every second; asked 0.9 s after the last one, the rate is still 100/s
    samples = ((NOW - 900, 300), (NOW - 1_900, 200), (NOW - 2_900, 100))
    assert measured_rate(samples, NOW, interval_ms=1000) == pytest.approx(100.0)
    # once the next batch is overdue, the waiting time counts against the rate
    assert measured_rate(samples, NOW + 3_000, interval_ms=1000) < 100.0


@pytest.mark.parametrize("samples", [(), ((NOW, 100),), ((NOW, 100), (NOW - 500, 50))])
def test_measured_rate_none_without_enough_samples(samples: tuple[tuple[int, int], ...]) -> None:
    assert measured_rate(samples, NOW) is None


def test_measured_rate_ignores_stale_samples() -> None:
    stale = ((NOW - RATE_WINDOW_MS - 1, 900), (NOW - RATE_WINDOW_MS - 10_000, 100))
    assert measured_rate(stale, NOW) is None
    mixed = ((NOW, 300), (NOW - 10_000, 200), (NOW - RATE_WINDOW_MS - 1, 0))
    assert measured_rate(mixed, NOW) == pytest.approx(10.0)


def test_measured_rate_never_negative() -> None:
    assert measured_rate(((NOW, 100), (NOW - 10_000, 300)), NOW) == 0.0


def test_nominal_rate() -> None:
    assert nominal_rate(view(batch_size=10, interval_ms=1000)) == 10.0
    assert nominal_rate(view(batch_size=5, interval_ms=50)) == 100.0
    assert nominal_rate(view(batch_size=5, interval_ms=0)) == 5000.0  # no division by zero


def test_estimate_wait() -> None:
    assert estimate_wait(100, 20.0, 10.0) == 5.0
    assert estimate_wait(100, None, 10.0) == 10.0  # no measurement: the nominal rate
    assert estimate_wait(100, 0.0, 10.0) == 10.0  # stalled measurement: the nominal rate
    assert estimate_wait(0, None, 10.0) == 0.0
    assert estimate_wait(1, 3.0, 10.0) == 0.3  # rounded to a tenth
    assert estimate_wait(5, None, 0.0) == float("inf")


# -- poll pacing -----------------------------------------------------------------------------

SPREADS = [0.0, 0.1, 0.37, 0.5, 0.999]
WINDOWS_MS = [2_000, 3_000, 5_000, 10_000, 30_000, 60_000, 300_000, 3_600_000]


@pytest.mark.parametrize("abandon_ms", WINDOWS_MS)
def test_waiting_poll_bounds(abandon_ms: int) -> None:
    room = view(abandon_ms=abandon_ms, batch_size=10)
    for ahead in (0, 5, 10, 11, 100, 10_000, 10**7):
        for eta in (None, 0.0, 0.5, 3.0, 60.0, 3600.0, 10**6):
            for spread in SPREADS:
                poll = poll_interval(
                    room, State.WAITING, ahead=ahead, eta=eta, now_ms=NOW, spread=spread
                )
                assert poll is not None
                assert poll >= MIN_POLL_S, (abandon_ms, ahead, eta, spread)
                assert poll <= abandon_ms / 1000 * 3 / 4, (abandon_ms, ahead, eta, spread)


def test_waiting_poll_is_frequent_near_the_front_and_rare_far_back() -> None:
    room = view()
    near = poll_interval(room, State.WAITING, ahead=3, eta=0.4, now_ms=NOW, spread=0.5)
    far = poll_interval(room, State.WAITING, ahead=50_000, eta=5000.0, now_ms=NOW, spread=0.5)
    assert near == MIN_POLL_S
    assert far is not None and far > 10 * near
    assert far <= MAX_POLL_S


def test_waiting_poll_spread_staggers_a_crowd() -> None:
    room = view()
    polls = {
        poll_interval(room, State.WAITING, ahead=5000, eta=500.0, now_ms=NOW, spread=s)
        for s in SPREADS
    }
    assert len(polls) > 1


@pytest.mark.parametrize("state", [State.ADMITTED, State.EXPIRED, State.SOLD_OUT, State.CLOSED])
def test_final_states_stop_polling(state: State) -> None:
    assert poll_interval(view(), state, ahead=None, eta=None, now_ms=NOW, spread=0.3) is None


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("until_open_ms", [0, 100, 1_000, 5_000, 20_000])
def test_not_open_polls_just_after_the_opening(spread: float, until_open_ms: int) -> None:
    room = not_open()  # 60 s abandonment window: ceiling well above 20 s
    poll = poll_interval(
        room, State.NOT_OPEN, ahead=None, eta=None, now_ms=T0 - until_open_ms, spread=spread
    )
    assert poll is not None
    wake_ms = T0 - until_open_ms + poll * 1000
    assert T0 < wake_ms <= T0 + 2_300  # after the opening, within the spread
    assert poll <= room.abandon_ms / 1000 * 3 / 4


def test_not_open_spread_staggers_the_wake_up() -> None:
    polls = [
        poll_interval(not_open(), State.NOT_OPEN, ahead=None, eta=None, now_ms=T0 - 5000, spread=s)
        for s in SPREADS
    ]
    assert len(set(polls)) == len(polls)
    assert max(polls) - min(polls) >= 1.5  # spread over about two seconds


def test_not_open_after_opening_time_still_wakes_soon() -> None:
    """The opening time passed but the room has not seen it yet: poll again right away."""
    poll = poll_interval(
        not_open(), State.NOT_OPEN, ahead=None, eta=None, now_ms=T0 + 30_000, spread=0.5
    )
    assert poll is not None and 0 < poll <= 2.2


@pytest.mark.parametrize("abandon_ms", [10_000, 60_000, 3_600_000])
def test_not_open_far_from_opening_polls_within_the_window(abandon_ms: int) -> None:
    room = not_open(abandon_ms=abandon_ms)
    poll = poll_interval(
        room, State.NOT_OPEN, ahead=None, eta=None, now_ms=T0 - 10 * HOUR_MS, spread=0.5
    )
    assert poll is not None
    assert MIN_POLL_S <= poll <= min(MAX_POLL_S, abandon_ms / 1000 * 3 / 4)


def test_poll_interval_of_decide_matches() -> None:
    room = view()
    status = decide(room, position=5000, outcome=None, now_ms=NOW, spread=0.25)
    assert status.poll_after_seconds == poll_interval(
        room, State.WAITING, ahead=status.ahead, eta=status.eta_seconds, now_ms=NOW, spread=0.25
    )


def test_from_redis() -> None:
    meta = {
        "opens_ms": str(T0),
        "closes_ms": str(T0 + HOUR_MS),
        "batch_size": "10",
        "interval_ms": "500",
        "max_active": "50",
        "admission_ttl_ms": "600000",
        "abandon_ms": "60000",
        "shuffle_key": "00ff",
        "opened": "1",
        "P": "7",
        "pre": "7",
        "seq": "30",
        "frontier": "12",
        "sold_out": "0",
        "closed": "1",
    }
    room = RoomView.from_redis(meta, [f"{NOW}:12:10:0", f"{NOW - 500}:2:2:0"])
    assert room == replace(
        view(
            interval_ms=500,
            shuffle_key=b"\x00\xff",
            prequeue=7,
            pre=7,
            seq=30,
            frontier=12,
            closed=True,
            next_batch_ms=0,
        ),
        batches=((NOW, 12), (NOW - 500, 2)),
    )
    assert room.is_closed(NOW)
