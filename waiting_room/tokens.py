"""Signed queue tickets and admission tokens.

A token is `base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`. Signing uses the
current key; verification accepts the current and the previous key, so keys rotate without
throwing anyone out of line. Bad signatures and expiry are told apart because the API answers
them differently (401 and 410).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Literal

TICKET = "ticket"
ADMISSION = "admission"
Kind = Literal["ticket", "admission"]


class TokenError(Exception):
    """Base of token failures; `reason` is safe to show the shopper."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenInvalid(TokenError):
    """Malformed, tampered, signed with an unknown key, or meant for something else."""


class TokenExpired(TokenError):
    """Genuine but past its expiry."""


@dataclass(frozen=True)
class Claims:
    kind: str
    sale: str
    visitor: str
    index: int
    exp: float

    def to_payload(self) -> dict[str, Any]:
        return {"k": self.kind, "s": self.sale, "v": self.visitor, "j": self.index, "e": self.exp}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = keys

    def sign(self, claims: Claims) -> str:
        body = _b64(json.dumps(claims.to_payload(), separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(self._keys[0], body))}"

    def verify(self, token: str, *, kind: Kind, sale: str, now: float) -> Claims:
        if not isinstance(token, str) or len(token) > 1024 or token.count(".") != 1:
            raise TokenInvalid("the token is malformed")
        body, _, sig = token.partition(".")
        try:
            given = _unb64(sig)
        except (binascii.Error, ValueError):
            raise TokenInvalid("the token is malformed") from None
        if not any(hmac.compare_digest(self._mac(key, body), given) for key in self._keys):
            raise TokenInvalid("the token's signature does not match: it was altered or forged")
        try:
            raw = json.loads(_unb64(body))
            claims = Claims(
                kind=str(raw["k"]),
                sale=str(raw["s"]),
                visitor=str(raw["v"]),
                index=int(raw["j"]),
                exp=float(raw["e"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise TokenInvalid("the token is malformed") from None
        if claims.kind != kind:
            raise TokenInvalid(f"this is not a {kind} token")
        if claims.sale != sale:
            raise TokenInvalid("the token belongs to another sale")
        if claims.exp <= now:
            raise TokenExpired(f"the {kind} expired")
        return claims

    @staticmethod
    def _mac(key: bytes, body: str) -> bytes:
        return hmac.new(key, body.encode(), hashlib.sha256).digest()
