"""A price on scripted joins: a proof of work for each new place in an anonymous sale.

Without identity a place is per cookie, and a script can drop its cookie at every join. A
proof of work makes each new place cost CPU time: the join without one is refused with a
challenge, the client searches for a counter whose hash starts with enough zero bits, and joins
again with the solution.

The challenges are ALTCHA's (v2, algorithm "SHA-256": iterated SHA-256, hashcash-like),
created and verified with the `altcha` library, so any ALTCHA solver can solve them and the
canonical signing is the library's, not ours. The challenge is HMAC-signed with the token keys
and carries what it is for (the sale, and the visitor or the client address), so the server
keeps no state until a solution is spent; spending it is a Redis key set NX by the join script
(room.py), so a solution buys one place at most. Verifying costs the server a few SHA-256 and
one HMAC (about 80 microseconds, most of it decoding the payload).

The difficulty is in bits: 2**bits hashes are expected. ALTCHA's key prefix is hex, four bits
a digit, so the last 0-3 bits are the iteration count (each attempt hashes 1, 2, 4 or 8 times):
2**bits either way, at a verifying cost of at most 8 hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altcha

from flashsale.waiting_room.sale import POW_DIFFICULTY_BOUNDS

ALGORITHM = "SHA-256"
CHALLENGE_TTL_S = 300  # long enough for a slow phone, short enough to keep spent keys few
MAX_PAYLOAD_CHARS = 4096
# the admitter raises a sale's difficulty by at most this many bits (16 times the work)
MAX_RAISE_BITS = 4
# rates are measured over this much time (the admitter samples every second or so)
PACE_WINDOW_S = 10.0


class ProofRefused(Exception):
    """A join's proof of work does not buy a place; `code` says why, `reason` in words."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as its arguments, not its message
        return (type(self), (self.code, self.reason))


@dataclass(frozen=True)
class Proof:
    """A verified solution, not yet spent: its single-use id and when its challenge expires."""

    proof_id: str
    expires_ms: int


def work(bits: int) -> tuple[str, int]:
    """The ALTCHA key prefix (hex zeros) and the iterations per attempt for `bits` bits."""
    return "0" * (bits // 4), 2 ** (bits % 4)


class Proofs:
    """Issues and verifies the challenges; the keys are the token keys (current first)."""

    def __init__(self, keys: tuple[bytes, ...], clock: Callable[[], float] = time.time) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self.keys = keys
        self.clock = clock

    def bound_to(self, visitor: str | None, address: str) -> str:
        """Who a challenge is for: the visitor when one is known, else the client's address
        (kept out of the challenge as a keyed hash)."""
        if visitor is not None:
            return f"v:{visitor}"
        digest = hmac.digest(self.keys[0], b"pow-address\0" + address.encode(), "sha256")
        return f"a:{digest[:12].hex()}"

    def challenge(self, sale_id: str, bound: str, bits: int) -> dict[str, Any]:
        """A fresh signed challenge of `bits` bits for a join to `sale_id` by `bound`."""
        low, high = POW_DIFFICULTY_BOUNDS
        prefix, cost = work(min(max(bits, low), high))
        made = altcha.create_challenge(
            ALGORITHM,
            cost,
            key_prefix=prefix,
            expires_at=int(self.clock()) + CHALLENGE_TTL_S,
            data={"sale": sale_id, "for": bound},
            hmac_secret=self.keys[0],
        )
        return dict(made.to_dict())

    def verify(self, encoded: str, sale_id: str, bound: str) -> Proof:
        """The proof in `encoded` (ALTCHA's base64 payload: challenge and solution), checked
        against its signature, expiry, solution and purpose; ProofRefused otherwise."""
        if len(encoded) > MAX_PAYLOAD_CHARS:
            raise ProofRefused("proof_of_work_invalid", "the proof of work is too long")
        try:
            payload = altcha.Payload.from_base64(encoded)
            data = payload.challenge.parameters.data
            expires_at = int(payload.challenge.parameters.expires_at or 0)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise ProofRefused(
                "proof_of_work_invalid",
                "the proof of work is malformed: send the base64 payload of the challenge "
                "and its solution",
            ) from None
        if payload.challenge.parameters.algorithm != ALGORITHM:
            raise ProofRefused("proof_of_work_invalid", "this is not a challenge we issued")
        for key in self.keys:
            result = altcha.verify_solution(payload, key)
            if result.expired:
                raise ProofRefused(
                    "proof_of_work_expired", "the challenge expired: solve a new one"
                )
            if not result.invalid_signature:
                break
        else:
            raise ProofRefused("proof_of_work_invalid", "this is not a challenge we issued")
        if not result.verified:
            raise ProofRefused("proof_of_work_invalid", "the solution does not solve the challenge")
        if data != {"sale": sale_id, "for": bound}:
            raise ProofRefused(
                "proof_of_work_mismatch",
                "this challenge was issued for another sale or another visitor",
            )
        signature = str(payload.challenge.signature)
        proof_id = hashlib.sha256(signature.encode()).hexdigest()[:32]
        return Proof(proof_id, expires_at * 1000)


# -- how hard: the admitter's decision ---------------------------------------------------------


def difficulty(base: int, joins_per_s: float, admissions_per_s: float) -> int:
    """The difficulty (bits) new places cost now: the sale's base while the line grows no more
    than twice as fast as it is admitted, then one bit more (twice the work) for each doubling
    of joins over admissions, at most MAX_RAISE_BITS more and never past the bound."""
    if base <= 0:
        return 0
    if joins_per_s <= 0:
        return base
    pressure = joins_per_s / admissions_per_s if admissions_per_s > 0 else math.inf
    if pressure < 2:
        return base
    extra = MAX_RAISE_BITS if math.isinf(pressure) else int(math.log2(pressure))
    return min(POW_DIFFICULTY_BOUNDS[1], base + min(MAX_RAISE_BITS, extra))


class Pace:
    """Join and admission rates of one sale from the admitter's samples of its counters."""

    def __init__(self, window_s: float = PACE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int, int]] = deque()

    def add(self, t: float, joined: int, admitted: int) -> None:
        self.samples.append((t, joined, admitted))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rates(self) -> tuple[float, float] | None:
        """(joins per second, admissions per second) over the window; None until the
        samples span most of it (a first look says nothing about a rate)."""
        if len(self.samples) < 2:
            return None
        (t0, joined0, admitted0), (t1, joined1, admitted1) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span < self.window_s / 2:
            return None
        return max(0, joined1 - joined0) / span, max(0, admitted1 - admitted0) / span
