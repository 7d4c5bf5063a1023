"""Proof of work: challenges issued and verified (ALTCHA), and the admitter's difficulty rule."""

from __future__ import annotations

import base64
import json
import math

import altcha
import pytest

from flashsale.waiting_room.pow import (
    MAX_RAISE_BITS,
    Pace,
    ProofRefused,
    Proofs,
    difficulty,
    work,
)
from flashsale.waiting_room.sale import POW_DIFFICULTY_BOUNDS

KEY = b"k" * 32
OLD_KEY = b"o" * 32


def solved(challenge: dict[str, object]) -> str:
    """The base64 payload a client sends: the challenge and a solution (ALTCHA's solver)."""
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


def edited(payload: str, change: object) -> str:
    data = json.loads(base64.b64decode(payload))
    change(data)  # type: ignore[operator]
    return base64.b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(("bits", "prefix", "cost"), [(4, "0", 1), (8, "00", 1), (18, "0000", 4)])
def test_work_is_two_to_the_bits(bits: int, prefix: str, cost: int) -> None:
    assert work(bits) == (prefix, cost)
    assert 16 ** len(prefix) * cost == 2**bits


def test_a_solution_buys_one_proof_for_its_sale_and_visitor() -> None:
    proofs = Proofs((KEY,))
    bound = proofs.bound_to("visitor-0001", "198.51.100.1")
    challenge = proofs.challenge("spring", bound, 8)
    assert challenge["parameters"]["keyPrefix"] == "00"  # type: ignore[index]
    payload = solved(challenge)
    proof = proofs.verify(payload, "spring", bound)
    assert len(proof.proof_id) == 32
    assert proofs.verify(payload, "spring", bound) == proof  # same id: the room spends it once
    for sale, other in (("autumn", bound), ("spring", proofs.bound_to("visitor-0002", "x"))):
        with pytest.raises(ProofRefused) as refused:
            proofs.verify(payload, sale, other)
        assert refused.value.code == "proof_of_work_mismatch"


def test_without_a_visitor_the_challenge_is_for_the_address() -> None:
    proofs = Proofs((KEY,))
    here = proofs.bound_to(None, "198.51.100.1")
    assert here == proofs.bound_to(None, "198.51.100.1") != proofs.bound_to(None, "198.51.100.2")
    assert "198.51.100.1" not in here  # a keyed hash, not the address
    payload = solved(proofs.challenge("spring", here, 4))
    proofs.verify(payload, "spring", here)
    with pytest.raises(ProofRefused):
        proofs.verify(payload, "spring", proofs.bound_to(None, "198.51.100.2"))


def test_previous_key_still_verifies_and_a_foreign_key_does_not() -> None:
    bound = "v:visitor-0001"
    old = Proofs((OLD_KEY,))
    payload = solved(old.challenge("spring", bound, 4))
    Proofs((KEY, OLD_KEY)).verify(payload, "spring", bound)  # issued before the rotation
    with pytest.raises(ProofRefused) as refused:
        Proofs((KEY,)).verify(payload, "spring", bound)
    assert refused.value.code == "proof_of_work_invalid"


def test_expired_challenge_is_refused() -> None:
    bound = "v:visitor-0001"
    past = Proofs((KEY,), clock=lambda: 1_000_000.0)  # issued long ago
    payload = solved(past.challenge("spring", bound, 4))
    with pytest.raises(ProofRefused) as refused:
        Proofs((KEY,)).verify(payload, "spring", bound)
    assert refused.value.code == "proof_of_work_expired"


def test_tampering_and_garbage_are_refused() -> None:
    proofs = Proofs((KEY,))
    bound = "v:visitor-0001"
    payload = solved(proofs.challenge("spring", bound, 8))

    def easier(data: dict) -> None:  # type: ignore[type-arg]
        data["challenge"]["parameters"]["keyPrefix"] = ""

    def wrong_counter(data: dict) -> None:  # type: ignore[type-arg]
        data["solution"]["counter"] += 1

    def other_sale(data: dict) -> None:  # type: ignore[type-arg]
        data["challenge"]["parameters"]["data"]["sale"] = "autumn"

    for change in (easier, wrong_counter, other_sale):
        with pytest.raises(ProofRefused) as refused:
            proofs.verify(edited(payload, change), "spring", bound)
        assert refused.value.code == "proof_of_work_invalid", change
    for garbage in ("", "not base64!", base64.b64encode(b"[1, 2]").decode(), "x" * 5000):
        with pytest.raises(ProofRefused):
            proofs.verify(garbage, "spring", bound)


def test_difficulty_rises_a_bit_per_doubling_of_joins_over_admissions() -> None:
    assert difficulty(0, 1000, 1) == 0  # the sale prices no joins
    assert difficulty(18, 0, 0) == 18  # nobody joining
    assert difficulty(18, 150, 100) == 18  # the line grows, but less than twice as fast
    assert difficulty(18, 200, 100) == 19
    assert difficulty(18, 800, 100) == 21
    assert difficulty(18, 10_000, 100) == 18 + MAX_RAISE_BITS  # capped: 16 times the work
    assert difficulty(18, 5, 0) == 18 + MAX_RAISE_BITS  # nothing admitted at all
    assert difficulty(POW_DIFFICULTY_BOUNDS[1], 10_000, 1) == POW_DIFFICULTY_BOUNDS[1]
    # monotone in the pressure
    levels = [difficulty(16, j, 10) for j in range(0, 2000, 7)]
    assert levels == sorted(levels)


def test_pace_measures_rates_over_its_window() -> None:
    pace = Pace(window_s=10)
    assert pace.rates() is None
    pace.add(0, 0, 0)
    pace.add(2, 400, 10)
    assert pace.rates() is None  # two seconds say little about a rate
    for t in range(3, 31):
        pace.add(t, 200 * t, 5 * t)
    joins, admissions = pace.rates()  # type: ignore[misc]
    assert math.isclose(joins, 200) and math.isclose(admissions, 5)
    assert pace.samples[-1][0] - pace.samples[0][0] <= 11  # old samples dropped
