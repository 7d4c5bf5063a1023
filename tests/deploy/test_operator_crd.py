"""The FlashSale CRD and the operator: what no API server can check.

The CRD itself (structural schema, CEL rules within their cost budget, defaults, the examples
accepted, bad manifests refused with the server's own messages, printer columns) is checked
against a real kube-apiserver in tests/kubernetes/test_crd_server.py. Here: the CRD's bounds
and defaults are the sale model's, the operator accepts the examples and refuses bad specs
with a reason to act on (the Accepted condition's message), and its RBAC data and doc agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flashsale.operator import rbac, spec
from flashsale.waiting_room.sale import (
    ADMISSION_BOUNDS,
    ADMISSION_DEFAULTS,
    DEFAULT_POW_DIFFICULTY,
    POW_DIFFICULTY_BOUNDS,
    Sale,
    ValidationError,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "flashsale" / "files" / "crds" / "flashsales.flashsale.io.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    # timestamps stay strings, as the API server sees them (YAML 1.1 would make datetimes)
    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load(CRD)


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_agrees_with_the_sale_model(schema: dict[str, Any]) -> None:
    """Bounds and defaults in the CRD are the ones parse_sale enforces."""
    props = schema["properties"]["spec"]["properties"]
    admission = props["admission"]["properties"]
    names = {
        "batch_size": "batchSize",
        "batch_interval_ms": "batchIntervalMs",
        "max_active": "maxActive",
        "admission_ttl_seconds": "admissionTtlSeconds",
        "abandon_after_seconds": "abandonAfterSeconds",
    }
    for api, (low, high) in ADMISSION_BOUNDS.items():
        field = admission[names[api]]
        assert (field["minimum"], field["maximum"], field["default"]) == (
            low,
            high,
            ADMISSION_DEFAULTS[api],
        ), api
    defaults = Sale(id="x", name="x", stock=1, opens_at=None, closes_at=None)  # type: ignore[arg-type]
    assert props["perShopperLimit"]["default"] == defaults.per_shopper_limit
    assert props["holdSeconds"]["default"] == defaults.hold_seconds
    assert props["product"]["properties"]["currency"]["default"] == defaults.currency
    assert props["product"]["properties"]["priceCents"]["default"] == defaults.price_cents
    assert props["saleId"]["pattern"] == "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
    shoppers = props["shoppers"]["properties"]
    assert shoppers["identityRequired"]["default"] is defaults.identity_required is False
    pow_fields = shoppers["proofOfWork"]["properties"]
    assert pow_fields["enabled"]["default"] is (defaults.pow_difficulty > 0) is False
    difficulty = pow_fields["difficulty"]
    assert (difficulty["minimum"], difficulty["maximum"]) == POW_DIFFICULTY_BOUNDS
    assert difficulty["default"] == DEFAULT_POW_DIFFICULTY


def test_every_field_says_what_it_is_for(schema: dict[str, Any]) -> None:
    """`kubectl explain flashsale.spec...` has something to say about every field."""

    def undescribed(node: dict[str, Any], path: str) -> list[str]:
        missing = [] if node.get("description") else [path]
        for name, child in (node.get("properties") or {}).items():
            missing += undescribed(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            missing += undescribed(node["items"], f"{path}[]")
        return missing

    assert undescribed(schema["properties"]["spec"], "spec") == []
    assert undescribed(schema["properties"]["status"], "status") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_operator_accepts_the_examples(path: Path) -> None:
    manifest = load(path)
    assert manifest["apiVersion"] == "flashsale.io/v1alpha1" and manifest["kind"] == "FlashSale"
    # the operator turns each into a sale parse_sale accepts
    body, sale = spec.validate(manifest["metadata"]["name"], manifest["spec"])
    assert sale.id == manifest["spec"].get("saleId", manifest["metadata"]["name"])
    assert body["admission"]["max_active"] >= body["admission"]["batch_size"]


def test_the_examples_are_the_three_promised() -> None:
    assert [p.name for p in EXAMPLES] == [
        "flight-seats.yaml",
        "quantity-sale.yaml",
        "seated-concert.yaml",
    ]
    flight = load(ROOT / "examples" / "flight-seats.yaml")
    _, sale = spec.validate(flight["metadata"]["name"], flight["spec"])
    rows = sale.seat_map["sections"][0]["rows"]  # type: ignore[index]
    assert [r["name"] for r in rows] == [str(n) for n in range(1, 31)]
    assert all(r["seats"] == ["A", "B", "C", "D", "E", "F"] for r in rows)
    assert sale.stock == 180


def example_manifest() -> dict[str, Any]:
    return load(ROOT / "examples" / "quantity-sale.yaml")


# Bad specs (the API server refuses them too: tests/kubernetes/test_crd_server.py), and the
# operator's own message for each, in the manifest's words.
BAD = {
    "closes before it opens": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00+01:00", closesAt="2027-03-20T11:00:00+01:00"
        ),
        "spec.schedule.closesAt: must be after spec.schedule.opensAt (2027-03-20T10:00:00+00:00 "
        "is not after 2027-03-20T11:00:00+00:00)",
    ),
    "closes before it opens, wall-clock times": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00", closesAt="2027-03-20T09:00:00"
        ),
        "spec.schedule.closesAt: must be after spec.schedule.opensAt (2027-03-20T08:00:00+00:00 "
        "is not after 2027-03-20T11:00:00+00:00)",
    ),
    "both quantity and a seat map": (
        lambda s: s["inventory"].update(
            seatMap={"sections": [{"name": "Floor", "rows": [{"name": "A", "seats": 10}]}]}
        ),
        "spec.inventory: give exactly one of quantity (a number of units) or seatMap "
        "(sections of rows of seats), not both",
    ),
    "more let in at once than may be inside": (
        lambda s: s["admission"].update(batchSize=600, maxActive=500),
        "spec.admission.maxActive: must be at least spec.admission.batchSize",
    ),
    "seat labels that disagree with the count": (
        lambda s: s.update(
            inventory={
                "seatMap": {
                    "sections": [
                        {"name": "Floor", "rows": [{"name": "A", "seats": 3, "labels": ["1", "2"]}]}
                    ]
                }
            }
        ),
        "spec.inventory.seatMap.sections[0].rows[0].seats: is 3 but 2 labels are given; make "
        "them agree (or leave seats out)",
    ),
    "identity required and proof of work": (
        lambda s: s.update(shoppers={"identityRequired": True, "proofOfWork": {"enabled": True}}),
        "spec.shoppers.proofOfWork.enabled: a sale that requires identity gives one place per "
        "shopper already: proof of work is for anonymous sales",
    ),
    "a proof of work too hard for a phone": (
        lambda s: s.update(shoppers={"proofOfWork": {"enabled": True, "difficulty": 27}}),
        "spec.shoppers.proofOfWork.difficulty: must be between 4 and 26",
    ),
    "a misspelt shoppers field": (
        lambda s: s.update(shoppers={"identityRequierd": True}),
        "spec.shoppers.identityRequierd: unknown field; allowed: identityRequired, proofOfWork",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifests_are_refused_with_a_reason_to_act_on(case: str) -> None:
    change, by_operator = BAD[case]
    manifest = example_manifest()
    change(manifest["spec"])
    # the operator's own check (the same parse_sale the admin API runs), in the manifest's
    # words: this message is what status.conditions[Accepted] carries
    with pytest.raises(ValidationError) as info:
        spec.validate(manifest["metadata"]["name"], manifest["spec"])
    assert str(info.value) == by_operator


def test_the_operator_needs_no_defaults_from_the_server() -> None:
    """The same sale with or without the defaults the API server fills in (as
    tests/kubernetes/test_crd_server.py reads them back): the operator does not depend on
    them."""
    minimal = {
        "product": {"name": "Tiny"},
        "inventory": {"quantity": 5},
        "schedule": {"opensAt": "2027-01-01T10:00:00", "closesAt": "2027-01-01T11:00:00"},
    }
    defaulted = {
        "product": {"name": "Tiny", "priceCents": 0, "currency": "USD"},
        "inventory": {"quantity": 5},
        "schedule": {**minimal["schedule"], "timeZone": "UTC"},
        "prewarm": {"leadSeconds": 300},
        "admission": {
            "batchSize": 100,
            "batchIntervalMs": 1000,
            "maxActive": 500,
            "admissionTtlSeconds": 600,
            "abandonAfterSeconds": 60,
        },
        "perShopperLimit": 2,
        "holdSeconds": 300,
        "shoppers": {
            "identityRequired": False,
            "proofOfWork": {"enabled": False, "difficulty": 18},
        },
    }
    assert spec.validate("tiny", minimal)[1] == spec.validate("tiny", defaulted)[1]


@pytest.mark.parametrize(
    ("shoppers", "identity_required", "pow_difficulty"),
    [
        ({}, False, 0),
        ({"identityRequired": True}, True, 0),
        ({"identityRequired": True, "proofOfWork": {"difficulty": 22}}, True, 0),
        ({"proofOfWork": {"enabled": True}}, False, DEFAULT_POW_DIFFICULTY),
        ({"proofOfWork": {"enabled": True, "difficulty": 22}}, False, 22),
        ({"proofOfWork": {"enabled": False, "difficulty": 22}}, False, 0),
    ],
)
def test_shoppers_become_the_sales_identity_and_proof_of_work(
    shoppers: dict[str, Any], identity_required: bool, pow_difficulty: int
) -> None:
    """spec.shoppers is the sale's `identity` and `proof_of_work`, always written out, so a
    field removed from the manifest turns its setting off (a sale's proof of work is 0 bits
    when off)."""
    manifest = example_manifest()
    manifest["spec"]["shoppers"] = shoppers
    body, sale = spec.validate("spring-drop", manifest["spec"])
    assert body["identity"] == {"required": identity_required}
    assert body["proof_of_work"]["enabled"] is (pow_difficulty > 0)
    assert (sale.identity_required, sale.pow_difficulty) == (identity_required, pow_difficulty)


# -- the operator's field names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "manifest"),
    [
        ("closes_at", "spec.schedule.closesAt"),
        ("admission.max_active", "spec.admission.maxActive"),
        ("stock", "spec.inventory.quantity"),
        ("seat_map.sections[1].rows[2].name", "spec.inventory.seatMap.sections[1].rows[2].name"),
        (
            "seat_map.sections[0].rows[3].seats[4]",
            "spec.inventory.seatMap.sections[0].rows[3].labels[4]",
        ),
        ("id", "spec.saleId"),
        ("currency", "spec.product.currency"),
        ("identity.required", "spec.shoppers.identityRequired"),
        ("proof_of_work.difficulty", "spec.shoppers.proofOfWork.difficulty"),
    ],
)
def test_api_fields_are_named_as_in_the_manifest(api: str, manifest: str) -> None:
    assert spec.cr_field(api) == manifest


def test_an_invalid_name_asks_for_a_sale_id() -> None:
    with pytest.raises(ValidationError) as info:
        spec.sale_id("Spring.Drop", {})
    assert str(info.value) == (
        "spec.saleId: metadata.name 'Spring.Drop' is not a valid sale id; set spec.saleId to "
        "1-63 lowercase letters, digits or '-'"
    )


# -- RBAC ------------------------------------------------------------------------------------


def test_rbac_doc_and_data_agree() -> None:
    doc = (ROOT / "operator" / "RBAC.md").read_text()
    for entry in rbac.CALLS + rbac.PEERING_CALLS:
        rule = entry["rule"]
        for resource in rule["resources"]:
            line = next((ln for ln in doc.splitlines() if f"/ `{resource}` /" in ln), None)
            assert line is not None, f"RBAC.md has no row for {resource}"
            assert ", ".join(rule["verbs"]) in line, (resource, rule["verbs"], line)
    assert rbac.allows(rbac.rules(), "autoscaling", "horizontalpodautoscalers", "patch")
    assert not rbac.allows(rbac.rules(), "apps", "deployments/scale", "patch")
    assert not rbac.allows(rbac.rules(), "", "secrets", "get")
    assert {r["resources"][0] for r in rbac.rules(scope="cluster")} == {
        "namespaces",
        "customresourcedefinitions",
    }
    assert rbac.allows(rbac.rules(peering=True), "kopf.dev", "clusterkopfpeerings", "patch")
