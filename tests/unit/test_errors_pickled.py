"""The core's errors cross a process boundary whole: multiprocessing pickles them, and an
exception pickles as its class and `args` (the message alone, for most of these)."""

from __future__ import annotations

import pickle

import pytest

from flashsale.waiting_room.identity import IdentityRefused
from flashsale.waiting_room.payments import ProviderUnavailable
from flashsale.waiting_room.pow import ProofRefused
from flashsale.waiting_room.purchase import PurchaseRefused, Refusal
from flashsale.waiting_room.sale import ValidationError
from flashsale.waiting_room.tokens import TokenExpired

ERRORS = [
    PurchaseRefused(
        Refusal.CONFLICT,
        "limit_exceeded",
        "that would exceed the per-shopper limit",
        retry_after=2.5,
        order={"id": "o-1"},
        limit=2,
    ),
    ProofRefused("proof_of_work_invalid", "the solution does not match the challenge"),
    ValidationError("stock", "must be at least 1"),
    ProviderUnavailable(7.0),
    IdentityRefused("the token has expired"),
    TokenExpired("ticket expired"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_survives_pickling_with_every_field(error: Exception) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert vars(back) == vars(error)
    assert str(back) == str(error)
    assert back.args == error.args
