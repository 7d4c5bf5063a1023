"""A shop's identity provider for tests: real keys (cryptography), real signed JWTs (PyJWT),
and its JWKS as a file or served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://shop.example/identity"
AUDIENCE = "flashsale"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Signing keys by kid; `published` are the kids its JWKS lists (rotation changes them)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.jwks_requests = 0

    def new_key(self, kid: str, kind: str = "RS256", *, publish: bool = True) -> str:
        if kind == "RS256":
            self.keys[kid] = (kind, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        else:
            self.keys[kid] = (kind, ec.generate_private_key(ec.SECP256R1()))
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            kind, private = self.keys[kid]
            algorithm = RSAAlgorithm if kind == "RS256" else ECAlgorithm
            jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": kind})
        return {"keys": keys}

    def claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, subject: str, kid: str | None = None, **overrides: Any) -> str:
        kid = kid or self.published[0]
        kind, private = self.keys[kid]
        return jwt.encode(
            self.claims(subject, **overrides), private, algorithm=kind, headers={"kid": kid}
        )

    def forged(self, subject: str, header: dict[str, Any], secret: bytes | None) -> str:
        """A token with any header, HMAC-signed with `secret` (None: no signature at all)."""
        signing_input = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(self.claims(subject)).encode())}"
        )
        signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
        return f"{signing_input}.{_b64(signature)}"

    def public_pem(self, kid: str) -> bytes:
        return bytes(
            self.keys[kid][1]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()), encoding="utf-8")
        return path

    @contextmanager
    def served(self) -> Iterator[str]:
        """The JWKS at http://127.0.0.1:<port>/jwks.json while the block runs."""
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.jwks_requests += 1
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
