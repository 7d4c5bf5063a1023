"""Signed queue tickets and admission tokens.

A token is `base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`. Signing uses the
current key; verification accepts the current and the previous key, so keys rotate without
throwing anyone out of line. Bad signatures and expiry are told apart because the API answers
them differently (401 and 410).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Kind = Literal["ticket", "admission"]
TICKET: Kind = "ticket"
ADMISSION: Kind = "admission"


class TokenError(Exception):
    """Base of token failures; `reason` is safe to show the shopper."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenInvalid(TokenError):
    """Malformed, tampered, signed with an unknown key, or meant for something else."""


class TokenExpired(TokenError):
    """Genuine but past its expiry."""


@dataclass(slots=True)  # not frozen: built on every poll, 3x as fast
class Claims:
    kind: str
    sale: str
    visitor: str
    index: int
    exp: float

    def to_payload(self) -> dict[str, Any]:
        return {"k": self.kind, "s": self.sale, "v": self.visitor, "j": self.index, "e": self.exp}


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(data: bytes) -> bytes:
    """base64url without padding (binascii directly: the base64 module's wrappers cost more
    than the encoding of a token)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    """The inverse of _b64; like base64.urlsafe_b64decode, characters outside the alphabet
    are skipped (a signature is compared in its given spelling, so that changes nothing)."""
    return binascii.a2b_base64(data.translate(_FROM_URLSAFE) + b"=" * (-len(data) % 4))


class Signer:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = keys
        # HMAC's inner and outer hashes with each key already absorbed (RFC 2104): a copy per
        # token instead of hashing the padded key twice every time (verify is on every poll)
        self._pads = [_pads(key) for key in keys]

    def sign(self, claims: Claims) -> str:
        body = _b64(orjson.dumps(claims.to_payload()))
        return (body + b"." + _b64(_hmac(self._pads[0], body))).decode()

    def verify(
        self, token: str, *, kind: Kind, sale: str, now: float, expired_ok: bool = False
    ) -> Claims:
        """The token's claims once its signature, kind and sale check out; TokenExpired past
        its expiry unless `expired_ok` (to recognise who sent it, as an idempotent replay
        does)."""
        if not isinstance(token, str) or len(token) > 1024 or token.count(".") != 1:
            raise TokenInvalid("the token is malformed")
        body, _, sig = token.partition(".")
        encoded = body.encode("utf-8", "surrogatepass")
        # the signature is compared as spelt: only the one spelling we issue verifies (the
        # last base64 character carries 2 unused bits), so a token cannot be altered and
        # still verify; a character outside ASCII becomes '?', which no signature holds
        given = sig.encode("ascii", "replace")
        for pads in self._pads:
            if hmac.compare_digest(_b64(_hmac(pads, encoded)), given):
                break
        else:
            try:
                _unb64(sig.encode("ascii"))
            except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
                raise TokenInvalid("the token is malformed") from None
            raise TokenInvalid("the token's signature does not match: it was altered or forged")
        try:
            raw = orjson.loads(_unb64(encoded))
            claims = Claims(
                kind=str(raw["k"]),
                sale=str(raw["s"]),
                visitor=str(raw["v"]),
                index=int(raw["j"]),
                exp=float(raw["e"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):  # orjson's error is one
            raise TokenInvalid("the token is malformed") from None
        if claims.kind != kind:
            raise TokenInvalid(f"this is not a {kind} token")
        if claims.sale != sale:
            raise TokenInvalid("the token belongs to another sale")
        if claims.exp <= now and not expired_ok:
            raise TokenExpired(f"the {kind} expired")
        return claims

    @staticmethod
    def _mac(key: bytes, body: str) -> bytes:
        return hmac.digest(key, body.encode(), "sha256")


Pads = tuple["hashlib._Hash", "hashlib._Hash"]


def _pads(key: bytes) -> Pads:
    """HMAC-SHA256's inner and outer hash states for `key` (RFC 2104)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return (hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD)))


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac(pads: Pads, message: bytes) -> bytes:
    """HMAC-SHA256 of `message`, equal to hmac.digest(key, message, "sha256")."""
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()
