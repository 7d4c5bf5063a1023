"""One place per human: a sale may require the shop's signed identity (a JWT) on join.

Real shops run a drop for signed-in customers: their identity provider signs a JWT (issuer,
audience, expiry, subject) and publishes its public keys as a JWKS. A sale that requires
identity keys its place, its per-shopper limit and its orders on the token's subject instead
of a cookie, so a subject has one place whatever tabs, cookies or devices it uses.

Verification is PyJWT's: `PyJWKClient` caches the JWKS for a TTL and, when a token names a key
id the cached set lacks (the provider rotated its keys), reads the set again at most once per
cooldown, so made-up key ids cannot hammer the provider. The library fetches http(s) only; a
JWKS file (a mounted Secret) goes through the same client with only the read replaced. Tokens
must be signed with one of the configured asymmetric algorithms (never `none`, never HS256
with the public key as the secret) and carry `exp`, `iss`, `aud` and `sub`.

The subject never lands in Redis or PostgreSQL as is: the visitor id is a keyed hash of the
sale, the issuer and the subject (`visitor_for`), an unguessable id that the ticket and the
admission token then carry, so later calls (status, hold, pay) need no JWT.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKClientConnectionError, PyJWKClientError

from flashsale.config import Settings

LEEWAY_S = 30  # clocks of the shop's provider and ours may differ a little
MAX_TOKEN_CHARS = 8192
FETCH_TIMEOUT_S = 5.0


class IdentityRefused(Exception):
    """The token does not identify a shopper (`reason` is safe to show)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdentityUnavailable(Exception):
    """The identity provider's keys cannot be read right now (not the shopper's fault)."""


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str


def visitor_for(key: bytes, sale_id: str, identity: Identity) -> str:
    """The visitor id of `identity` in `sale_id`: a keyed hash, so raw subjects stay out of
    Redis keys and the database, and an id of one sale says nothing about another."""
    message = "\0".join(("flashsale-identity", sale_id, identity.issuer, identity.subject))
    digest = hmac.digest(key, message.encode(), "sha256")
    return "id-" + base64.urlsafe_b64encode(digest[:24]).decode()


class _JwksFile(PyJWKClient):
    """PyJWKClient's cache, rotation and cooldown over a JWKS file instead of a URL."""

    def __init__(self, path: str, *, lifespan: float, cooldown_duration: float) -> None:
        # the library accepts http(s) URIs only; this one is never fetched (fetch_data reads)
        super().__init__(
            "https://jwks-file.invalid/",
            lifespan=lifespan,
            cooldown_duration=cooldown_duration,
        )
        self.path = Path(path)

    def fetch_data(self) -> Any:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PyJWKClientConnectionError(f"cannot read the JWKS file: {exc}") from None
        self._last_successful_fetch = time.monotonic()
        return self._as_jwk_set_payload(data)


class IdentityVerifier:
    def __init__(
        self, keys: PyJWKClient, *, issuer: str, audience: str, algorithms: tuple[str, ...]
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityVerifier | None:
        """The verifier of the configured identity provider; None when there is none."""
        if not settings.identity_configured:
            return None
        keys: PyJWKClient
        if settings.identity_jwks_file:
            keys = _JwksFile(
                settings.identity_jwks_file,
                lifespan=settings.identity_jwks_ttl_seconds,
                cooldown_duration=settings.identity_jwks_cooldown_seconds,
            )
        else:
            keys = PyJWKClient(
                settings.identity_jwks_url,
                lifespan=settings.identity_jwks_ttl_seconds,
                cooldown_duration=settings.identity_jwks_cooldown_seconds,
                timeout=FETCH_TIMEOUT_S,
            )
        return cls(
            keys,
            issuer=settings.identity_issuer,
            audience=settings.identity_audience,
            algorithms=settings.identity_algorithm_list,
        )

    def verify(self, token: str) -> Identity:
        """The identity a token proves; IdentityRefused if it proves none. May read the JWKS
        (blocking: call `verify_async` from the event loop)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise IdentityRefused("the identity token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise IdentityRefused("the identity token is not a JWT") from None
        if header.get("alg") not in self.algorithms:
            raise IdentityRefused(
                f"the identity token must be signed with {', '.join(self.algorithms)}"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityRefused("the identity token names no signing key (kid)")
        try:
            key = self.keys.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise IdentityUnavailable(str(exc)) from None
        except PyJWKClientError:
            raise IdentityRefused("the identity token's signing key is unknown") from None
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise IdentityRefused("the identity token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise IdentityRefused(f"the identity token is not valid: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise IdentityRefused("the identity token has no subject")
        return Identity(self.issuer, subject)

    async def verify_async(self, token: str) -> Identity:
        """`verify` off the event loop: a JWKS read (rare: cached) must not stall it."""
        return await asyncio.to_thread(self.verify, token)
