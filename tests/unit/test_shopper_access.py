"""Who may take a place, as settings and sale fields: parsing and refusals (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from flashsale.config import Settings, SettingsError
from flashsale.waiting_room.identity import Identity, visitor_for
from flashsale.waiting_room.sale import DEFAULT_POW_DIFFICULTY, ValidationError, parse_sale
from flashsale.waiting_room.status import RoomView
from tests.support import sale_body

PROVIDER = {
    "FLASHSALE_IDENTITY_JWKS_URL": "https://shop.example/.well-known/jwks.json",
    "FLASHSALE_IDENTITY_ISSUER": "https://shop.example",
    "FLASHSALE_IDENTITY_AUDIENCE": "flashsale",
}


def test_identity_settings() -> None:
    settings = Settings.from_env(PROVIDER)
    assert settings.identity_configured
    assert settings.identity_algorithm_list == ("RS256", "ES256")
    assert not Settings.from_env({}).identity_configured


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"FLASHSALE_IDENTITY_ALGORITHMS": "RS256,HS256"}, "HS256"),
        ({"FLASHSALE_IDENTITY_ALGORITHMS": "none"}, "none"),
        ({"FLASHSALE_IDENTITY_ALGORITHMS": " , "}, "none given"),
        ({"FLASHSALE_IDENTITY_ISSUER": ""}, "ISSUER"),
        ({"FLASHSALE_IDENTITY_AUDIENCE": ""}, "AUDIENCE"),
        ({"FLASHSALE_IDENTITY_JWKS_FILE": "/etc/jwks.json"}, "not both"),
        ({"FLASHSALE_IDENTITY_JWKS_URL": "file:///etc/jwks.json"}, "http or https"),
        ({"FLASHSALE_IDENTITY_KEY": "short"}, "32 characters"),
        ({"FLASHSALE_IDENTITY_JWKS_TTL_SECONDS": "0"}, "TTL"),
    ],
)
def test_identity_settings_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({**PROVIDER, **env})


def test_visitor_id_of_an_identity() -> None:
    key = b"k" * 32
    alice = Identity("https://shop.example", "alice@shop.example")
    visitor = visitor_for(key, "spring", alice)
    assert visitor == visitor_for(key, "spring", alice)  # stable: one subject, one place
    assert visitor.startswith("id-") and len(visitor) == 35 and "alice" not in visitor
    others = {
        visitor_for(key, "autumn", alice),  # another sale
        visitor_for(key, "spring", Identity("https://other.example", alice.subject)),
        visitor_for(key, "spring", Identity(alice.issuer, "bob@shop.example")),
        visitor_for(b"j" * 32, "spring", alice),  # another install's key
    }
    assert visitor not in others and len(others) == 4


def sale(**fields: Any) -> Any:
    return parse_sale(sale_body(**fields))


def test_sale_access_fields() -> None:
    plain = sale()
    assert not plain.identity_required and plain.pow_difficulty == 0
    assert sale(identity={"required": True}).identity_required
    assert sale(proof_of_work={"enabled": True}).pow_difficulty == DEFAULT_POW_DIFFICULTY
    assert sale(proof_of_work={}).pow_difficulty == DEFAULT_POW_DIFFICULTY
    assert sale(proof_of_work={"difficulty": 12}).pow_difficulty == 12
    assert sale(proof_of_work={"enabled": False, "difficulty": 12}).pow_difficulty == 0
    shown = sale(proof_of_work={"difficulty": 12}).admin(plain.opens_at)
    assert shown["proof_of_work"] == {"enabled": True, "difficulty": 12}
    assert shown["identity"] == {"required": False}
    public = sale(identity={"required": True}).public(plain.opens_at)
    assert public["identity_required"] is True and public["proof_of_work_required"] is False
    changed = parse_sale({"proof_of_work": {"enabled": False}}, existing=sale(proof_of_work={}))
    assert changed.pow_difficulty == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"identity": True}, "identity"),
        ({"identity": {"required": "yes"}}, "identity.required"),
        ({"identity": {"required": True, "issuer": "x"}}, "identity.issuer"),
        ({"proof_of_work": {"difficulty": 3}}, "proof_of_work.difficulty"),
        ({"proof_of_work": {"difficulty": 27}}, "proof_of_work.difficulty"),
        ({"proof_of_work": {"difficulty": True}}, "proof_of_work.difficulty"),
        ({"proof_of_work": {"enabled": 1}}, "proof_of_work.enabled"),
        ({"proof_of_work": {"bits": 8}}, "proof_of_work.bits"),
        ({"identity": {"required": True}, "proof_of_work": {}}, "proof_of_work.enabled"),
    ],
)
def test_sale_access_fields_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        sale(**fields)
    assert refused.value.field == field


def test_the_room_asks_a_proof_only_of_anonymous_priced_sales() -> None:
    base = {
        "opens_ms": "1",
        "closes_ms": "2",
        "batch_size": "1",
        "interval_ms": "1000",
        "max_active": "1",
        "admission_ttl_ms": "1",
        "abandon_ms": "1",
        "shuffle_key": "00",
    }
    assert not RoomView.from_redis(base, []).proof_required
    assert RoomView.from_redis({**base, "pow_bits": "18"}, []).proof_required
    identity = RoomView.from_redis({**base, "pow_bits": "18", "identity": "1"}, [])
    assert identity.identity_required and not identity.proof_required
