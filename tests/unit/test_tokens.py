"""Signed queue tickets and admission tokens: round trip, every way to be refused, rotation."""

from __future__ import annotations

import base64
import json

import pytest

from flashsale.config import Settings
from flashsale.waiting_room.tokens import (
    ADMISSION,
    TICKET,
    Claims,
    Signer,
    TokenExpired,
    TokenInvalid,
)

NOW = 1_900_000_000.0
KEY = b"k" * 32
OTHER = b"o" * 32


def claims(**overrides: object) -> Claims:
    values: dict[str, object] = {
        "kind": TICKET,
        "sale": "s1",
        "visitor": "visitor-1",
        "index": 42,
        "exp": NOW + 60,
    }
    values.update(overrides)
    return Claims(**values)  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("kind", [TICKET, ADMISSION])
def test_round_trip(kind: str) -> None:
    signer = Signer((KEY,))
    original = claims(kind=kind, index=0)
    token = signer.sign(original)
    assert token.count(".") == 1
    assert signer.verify(token, kind=kind, sale="s1", now=NOW) == original  # type: ignore[arg-type]


def test_round_trip_large_index_and_fractional_expiry() -> None:
    signer = Signer((KEY,))
    original = claims(index=10**12, exp=NOW + 0.5)
    assert signer.verify(signer.sign(original), kind=TICKET, sale="s1", now=NOW) == original


def test_tampered_payload_is_invalid() -> None:
    signer = Signer((KEY,))
    body, sig = signer.sign(claims()).split(".")
    payload = json.loads(unb64(body))
    payload["j"] = 0  # jump the queue
    forged = b64(json.dumps(payload, separators=(",", ":")).encode())
    with pytest.raises(TokenInvalid, match="signature"):
        signer.verify(f"{forged}.{sig}", kind=TICKET, sale="s1", now=NOW)


def test_tampered_signature_is_invalid() -> None:
    signer = Signer((KEY,))
    body, sig = signer.sign(claims()).split(".")
    raw = bytearray(unb64(sig))
    raw[0] ^= 1
    with pytest.raises(TokenInvalid):
        signer.verify(f"{body}.{b64(bytes(raw))}", kind=TICKET, sale="s1", now=NOW)
    with pytest.raises(TokenInvalid):
        signer.verify(f"{body}.{sig[:-2]}", kind=TICKET, sale="s1", now=NOW)


def test_signed_by_unknown_key_is_invalid() -> None:
    token = Signer((OTHER,)).sign(claims())
    with pytest.raises(TokenInvalid):
        Signer((KEY,)).verify(token, kind=TICKET, sale="s1", now=NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "abc",
        "a.b.c",
        "not a token",
        "%%%.%%%",
        "abc.!!!",
        "x" * 2000,
        "a" * 1023 + ".",
        "€.€",
    ],
)
def test_garbage_is_invalid(garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        Signer((KEY,)).verify(garbage, kind=TICKET, sale="s1", now=NOW)


def test_non_string_is_invalid() -> None:
    with pytest.raises(TokenInvalid):
        Signer((KEY,)).verify(None, kind=TICKET, sale="s1", now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"k":"ticket","s":"s1","v":"v","j":"x","e":1e12}',
        b'{"k":"ticket","s":"s1","v":"v","j":1}',
    ],
)
def test_well_signed_but_malformed_payload_is_invalid(payload: bytes) -> None:
    """A payload we signed ourselves but that does not hold claims is still refused cleanly."""
    body = b64(payload)
    token = f"{body}.{b64(Signer._mac(KEY, body))}"
    with pytest.raises(TokenInvalid, match="malformed"):
        Signer((KEY,)).verify(token, kind=TICKET, sale="s1", now=NOW)


def test_wrong_kind_is_invalid() -> None:
    signer = Signer((KEY,))
    ticket = signer.sign(claims(kind=TICKET))
    with pytest.raises(TokenInvalid, match="admission"):
        signer.verify(ticket, kind=ADMISSION, sale="s1", now=NOW)
    admission = signer.sign(claims(kind=ADMISSION))
    with pytest.raises(TokenInvalid, match="ticket"):
        signer.verify(admission, kind=TICKET, sale="s1", now=NOW)


def test_wrong_sale_is_invalid() -> None:
    signer = Signer((KEY,))
    with pytest.raises(TokenInvalid, match="another sale"):
        signer.verify(signer.sign(claims(sale="s1")), kind=TICKET, sale="s2", now=NOW)


def test_expired_is_told_apart_from_invalid() -> None:
    signer = Signer((KEY,))
    token = signer.sign(claims(exp=NOW))
    with pytest.raises(TokenExpired):
        signer.verify(token, kind=TICKET, sale="s1", now=NOW)  # exp is exclusive
    with pytest.raises(TokenExpired):
        signer.verify(token, kind=TICKET, sale="s1", now=NOW + 3600)
    assert not issubclass(TokenExpired, TokenInvalid)
    assert signer.verify(token, kind=TICKET, sale="s1", now=NOW - 0.001).exp == NOW


def test_forgery_is_invalid_even_when_expired() -> None:
    """Signature is checked before expiry: a forged, expired token is 'invalid', not 'expired'."""
    token = Signer((OTHER,)).sign(claims(exp=NOW - 100))
    with pytest.raises(TokenInvalid):
        Signer((KEY,)).verify(token, kind=TICKET, sale="s1", now=NOW)


def test_key_rotation() -> None:
    old, new = b"old-" * 8, b"new-" * 8
    token = Signer((old,)).sign(claims())
    assert Signer((new, old)).verify(token, kind=TICKET, sale="s1", now=NOW) == claims()
    with pytest.raises(TokenInvalid):
        Signer((new,)).verify(token, kind=TICKET, sale="s1", now=NOW)
    # after rotation, new tokens are signed with the new key: the old-only signer refuses them
    fresh = Signer((new, old)).sign(claims())
    assert Signer((new,)).verify(fresh, kind=TICKET, sale="s1", now=NOW) == claims()
    with pytest.raises(TokenInvalid):
        Signer((old,)).verify(fresh, kind=TICKET, sale="s1", now=NOW)


def test_signer_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Signer(())


def test_settings_signing_keys_order() -> None:
    current, previous = "c" * 32, "p" * 32
    settings = Settings(token_key=current, token_key_previous=previous)
    assert settings.signing_keys() == (current.encode(), previous.encode())
    assert Settings(token_key=current).signing_keys() == (current.encode(),)


def test_settings_without_key_use_one_random_key_per_process() -> None:
    keys = Settings(token_key="").signing_keys()
    assert len(keys) == 1 and len(keys[0]) >= 32
    assert Settings(token_key="").signing_keys() == keys  # stable within the process
    previous = "p" * 32
    assert Settings(token_key="", token_key_previous=previous).signing_keys() == (
        keys[0],
        previous.encode(),
    )


def test_settings_keys_drive_the_signer() -> None:
    old, new = "o" * 32, "n" * 32
    before = Signer(Settings(token_key=old).signing_keys())
    after = Signer(Settings(token_key=new, token_key_previous=old).signing_keys())
    token = before.sign(claims())
    assert after.verify(token, kind=TICKET, sale="s1", now=NOW) == claims()


def test_a_signature_respelt_in_its_unused_bits_is_refused() -> None:
    signer = Signer((b"k" * 32,))
    token = signer.sign(Claims("ticket", "sale-a", "visitor-1", 3, exp=2e9))
    body, sig = token.split(".")
    # 32 bytes take 43 base64 characters: the last one's two low bits carry nothing
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(sig[-1])
    for other in range(value & ~3, (value & ~3) + 4):
        if other == value:
            continue
        respelt = f"{body}.{sig[:-1]}{alphabet[other]}"
        with pytest.raises(TokenInvalid):
            signer.verify(respelt, kind="ticket", sale="sale-a", now=1e9)
