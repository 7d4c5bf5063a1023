"""Who may take a place: the shop's identity, or a proof of work, read off a join.

The rules are the core's (waiting_room/identity.py, waiting_room/pow.py, and the join script,
which spends a proof once and asks none of a visitor who already has a place); this module
reads what a join carries and answers a refusal as the API's JSON error.

- A sale that requires identity: the join sends `Authorization: Bearer <the shop's JWT>`. The
  place belongs to the token's subject: the visitor id is derived from it (and the answer's
  `visitor_id` and cookie carry it), so ten cookies, tabs or devices get one place. Without a
  token: 401 `identity_required`; with a bad one: 401 `invalid_identity`. Status, hold and pay
  need no JWT afterwards: the ticket and the admission token are signed for that visitor id.
- An anonymous sale with a proof of work: a join that would take a new place without a valid
  solution gets 403 with a `challenge` (ALTCHA); the client solves it and joins again with the
  base64 payload in `X-Proof-Of-Work`. A challenge is for the visitor presented, or for the
  client's address when none is; a solution buys one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flashsale.api.errors import ApiError
from flashsale.waiting_room.identity import IdentityRefused, IdentityUnavailable, visitor_for
from flashsale.waiting_room.pow import Proof, ProofRefused
from flashsale.waiting_room.services import Services

PROOF_HEADER = "x-proof-of-work"
NO_STORE = {"Cache-Control": "no-store"}
_PROOF_MESSAGES = {
    "proof_required": ("proof_of_work_required", "a new place needs a proof of work"),
    "proof_spent": ("proof_of_work_spent", "this proof of work has already bought a place"),
}


@dataclass(frozen=True)
class JoinPass:
    """What a join may take a place as: the identity's visitor id (None: the visitor presented,
    or a new one) and a verified proof of work, when it brought one."""

    visitor: str | None = None
    proof: Proof | None = None


async def check_join(
    services: Services,
    sale_id: str,
    presented: str | None,
    address: str,
    authorization: str | None,
    proof: str | None,
) -> JoinPass:
    """The join's pass, or the ApiError refusing it (401 identity, 403 with a challenge)."""
    view = await services.room.view(sale_id)
    if view.identity_required:
        return JoinPass(visitor=await _visitor_of_identity(services, sale_id, authorization))
    if not view.proof_required:
        return JoinPass()
    bound = services.proofs.bound_to(presented, address)
    if proof:
        try:
            return JoinPass(proof=services.proofs.verify(proof, sale_id, bound))
        except ProofRefused as refused:
            raise challenge(
                services, sale_id, bound, view.pow_difficulty, refused.code, refused.reason
            ) from None
    if presented is None:  # a new visitor: a new place for sure, refused without asking Redis
        code, message = _PROOF_MESSAGES["proof_required"]
        raise challenge(services, sale_id, bound, view.pow_difficulty, code, message)
    return JoinPass()  # the join script decides: a place that exists costs nothing


async def refused_join(
    services: Services, sale_id: str, presented: str | None, address: str, outcome: str
) -> ApiError:
    """The answer to a join the room refused for its proof of work (`proof_required`, or
    `proof_spent`): a fresh challenge."""
    view = await services.room.view(sale_id)
    code, message = _PROOF_MESSAGES[outcome]
    bound = services.proofs.bound_to(presented, address)
    return challenge(services, sale_id, bound, view.pow_difficulty, code, message)


def challenge(
    services: Services, sale_id: str, bound: str, bits: int, code: str, message: str
) -> ApiError:
    return ApiError(
        403,
        f"{message}: solve the challenge and join again with the solution in X-Proof-Of-Work",
        code=code,
        headers=NO_STORE,
        extra={"challenge": services.proofs.challenge(sale_id, bound, bits)},
    )


async def _visitor_of_identity(services: Services, sale_id: str, authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "this sale is for signed-in shoppers: join with 'Authorization: Bearer <token>', "
            "the identity token the shop gave you",
            code="identity_required",
            headers={"WWW-Authenticate": 'Bearer realm="flashsale"', **NO_STORE},
        )
    if services.identity is None:  # the sale was made where a provider was configured
        raise ApiError(
            503,
            "no identity provider is configured on this server",
            code="identity_unavailable",
            headers={"Retry-After": "30"},
        )
    try:
        identity = await services.identity.verify_async(token)
    except IdentityRefused as refused:
        raise ApiError(
            401,
            refused.reason,
            code="invalid_identity",
            headers={"WWW-Authenticate": 'Bearer realm="flashsale", error="invalid_token"'},
        ) from None
    except IdentityUnavailable:
        raise ApiError(
            503,
            "the shop's identity provider cannot be reached; try again shortly",
            code="identity_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    return visitor_for(services.settings.identity_hash_key(), sale_id, identity)


# -- /openapi.json: the join's identity and proof of work (api/openapi.py merges these) ---------

_ERROR = {"$ref": "#/components/schemas/Error"}
OPENAPI_DESCRIPTION = (
    " A sale with `identity_required` takes the shop's JWT as `Authorization: Bearer`: the "
    "place, the per-shopper limit and the orders belong to the token's subject (one place "
    "per subject, whatever cookies or devices), and the answer's `visitor_id` (also set as "
    "the cookie) is the id to send afterwards; status, hold and pay need no JWT. An "
    "anonymous sale with `proof_of_work` answers a join that would take a new place without a "
    "solution with 403 and a `challenge` (ALTCHA v2, algorithm SHA-256: find a counter whose "
    "iterated SHA-256 of salt+nonce+counter starts with `keyPrefix`); join again with the "
    "base64 of `{challenge, solution: {counter, derivedKey}}` in X-Proof-Of-Work. A solution "
    "buys one place; a visitor who has a place needs none."
)
OPENAPI_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "Authorization",
        "in": "header",
        "schema": {"type": "string"},
        "description": "`Bearer <JWT>` from the shop's identity provider (sales that "
        "require identity).",
    },
    {
        "name": "X-Proof-Of-Work",
        "in": "header",
        "schema": {"type": "string"},
        "description": "The base64 ALTCHA payload solving the challenge of a 403 (anonymous "
        "sales with a proof of work).",
    },
]
OPENAPI_SCHEMAS: dict[str, Any] = {
    "Challenge": {
        "type": "object",
        "description": "An ALTCHA v2 challenge, HMAC-signed; `parameters.data` says which sale "
        "and visitor (or address) it is for.",
        "required": ["parameters", "signature"],
        "properties": {
            "parameters": {
                "type": "object",
                "required": ["algorithm", "cost", "keyPrefix", "nonce", "salt", "expiresAt"],
                "properties": {
                    "algorithm": {"const": "SHA-256"},
                    "cost": {"type": "integer", "description": "SHA-256 rounds per attempt"},
                    "keyLength": {"type": "integer"},
                    "keyPrefix": {"type": "string", "description": "Hex the key must start with"},
                    "nonce": {"type": "string"},
                    "salt": {"type": "string"},
                    "expiresAt": {"type": "integer", "description": "Unix time, seconds"},
                    "data": {"type": "object"},
                },
            },
            "signature": {"type": "string"},
        },
    },
    "ProofOfWorkRequired": {
        "allOf": [
            _ERROR,
            {
                "type": "object",
                "required": ["challenge"],
                "properties": {"challenge": {"$ref": "#/components/schemas/Challenge"}},
            },
        ]
    },
}
OPENAPI_RESPONSES: dict[str, Any] = {
    "401": {
        "description": "The sale requires identity: no JWT (`identity_required`) or one that "
        "identifies nobody (`invalid_identity`: signature, issuer, audience, expiry, algorithm)",
        "content": {"application/json": {"schema": _ERROR}},
    },
    "403": {
        "description": "A new place needs a proof of work: none was sent "
        "(`proof_of_work_required`), or it was invalid, expired, for someone else or spent "
        "already; the body carries a fresh `challenge`",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ProofOfWorkRequired"}}
        },
    },
    "503": {
        "description": "The shop's identity provider cannot be reached (`identity_unavailable`); "
        "see Retry-After",
        "content": {"application/json": {"schema": _ERROR}},
    },
}
