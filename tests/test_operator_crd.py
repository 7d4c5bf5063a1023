"""The FlashSale CRD: a structural schema the API server accepts, examples that validate against
it (its OpenAPI schema and the intent of its CEL rules), and bad manifests refused with a
reason a person can act on, by the CRD and by the operator's own validation (parse_sale)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flashsale.operator import rbac, spec
from flashsale.waiting_room.sale import ADMISSION_BOUNDS, ADMISSION_DEFAULTS, Sale, ValidationError

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "charts" / "flashsale" / "crds" / "flashsales.flashsale.io.yaml"
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


# -- a structural schema ---------------------------------------------------------------------

ALLOWED = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "additionalProperties",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "nullable",
    "title",
    "example",
    "externalDocs",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
}
FORBIDDEN = {
    "$ref",
    "$schema",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
    "readOnly",
    "writeOnly",
    "xml",
    "discriminator",
}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def structural_problems(
    node: Any, path: str = "", *, in_junctor: bool = False, root: bool = True
) -> list[str]:
    """What keeps `node` from being a structural schema (Kubernetes' rules for CRDs, v1)."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path or '<root>'}: not a schema object"]
    where = path or "<root>"
    for key in node:
        if key in FORBIDDEN:
            problems.append(f"{where}: {key} is not allowed in a CRD schema")
        elif key not in ALLOWED:
            problems.append(f"{where}: unknown keyword {key}")
    open_ended = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if in_junctor:
        for key in ("type", "description", "default", "additionalProperties", "nullable"):
            if key in node:
                problems.append(f"{where}: {key} inside allOf/anyOf/oneOf/not")
    elif "type" not in node and not open_ended:
        problems.append(f"{where}: no type")
    if "type" in node and node["type"] not in TYPES:
        problems.append(f"{where}: unknown type {node['type']!r}")
    if node.get("uniqueItems"):
        problems.append(f"{where}: uniqueItems: true is not allowed")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    if root and path == "" and node.get("type") != "object":
        problems.append("<root>: must be an object")
    for name, child in (node.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}", in_junctor=in_junctor, root=False)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(
            node["additionalProperties"], f"{path}.*", in_junctor=in_junctor, root=False
        )
    if "items" in node:
        problems += structural_problems(
            node["items"], f"{path}[]", in_junctor=in_junctor, root=False
        )
    if node.get("type") == "array" and "items" not in node and not in_junctor:
        problems.append(f"{where}: an array without items")
    for junctor in JUNCTORS:
        branches = node.get(junctor)
        if branches is None:
            continue
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            problems += structural_problems(
                branch, f"{path}/{junctor}[{i}]", in_junctor=True, root=False
            )
            for name in branch.get("properties") or {}:
                if name not in (node.get("properties") or {}):
                    problems.append(f"{where}: {junctor} names .{name}, not declared outside")
    if path == ".metadata":
        extra = set(node.get("properties") or {}) - {"name", "generateName"}
        if extra or set(node) - {"type", "properties", "description"}:
            problems.append(".metadata: only name and generateName may be restricted")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys") or []:
            if key not in (item.get("required") or []) and "default" not in (
                item.get("properties") or {}
            ).get(key, {}):
                problems.append(f"{where}: list-map key {key} must be required or defaulted")
    if "default" in node and not in_junctor:
        try:
            jsonschema.validate(node["default"], json_schema(node))
        except jsonschema.ValidationError as error:
            problems.append(f"{where}: default does not validate: {error.message}")
    return problems


def test_the_crd_schema_is_structural(schema: dict[str, Any]) -> None:
    assert structural_problems(schema) == []


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"type": "object", "properties": {"a": {"description": "no type"}}}, ".a: no type"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "anyOf": [{"properties": {"b": {"type": "string"}}}],
            },
            "<root>: anyOf names .b, not declared outside",
        ),
        (
            {"type": "object", "oneOf": [{"type": "object"}]},
            "/oneOf[0]: type inside allOf/anyOf/oneOf/not",
        ),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, ".a: $ref is not allowed"),
        (
            {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}
                },
            },
            ".metadata: only name and generateName may be restricted",
        ),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, ".a: an array without items"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 1, "default": 0}},
            },
            ".a: default does not validate",
        ),
    ],
)
def test_the_structural_check_catches_what_the_api_server_refuses(
    broken: dict[str, Any], problem: str
) -> None:
    assert any(p.startswith(problem) for p in structural_problems(broken)), structural_problems(
        broken
    )


def test_the_crd_names_versions_and_columns(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "flashsales.flashsale.io"
    body = crd["spec"]
    assert body["group"] == "flashsale.io" and body["scope"] == "Namespaced"
    assert body["names"]["kind"] == "FlashSale" and body["names"]["plural"] == "flashsales"
    assert set(body["names"]["shortNames"]) == {"fs", "fsale"}
    [version] = body["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Opens", "Stock", "Sold", "Waiting", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status["counters"]["properties"]) >= {
        "waiting",
        "admitted",
        "active",
        "held",
        "sold",
        "remaining",
    }
    assert {"phase", "conditions", "observedGeneration", "transitions"} <= set(status)


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


# -- validating manifests: the OpenAPI schema, defaults, and the CEL rules -------------------


def json_schema(node: Any) -> Any:
    """An OpenAPI v3 (Kubernetes) schema as JSON Schema, with the API server's strict field
    validation (unknown fields refused, as `kubectl apply` does by default)."""
    if isinstance(node, list):
        return [json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes") and k not in ("nullable", "default")
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def with_defaults(node: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: a missing field with a default gets it, recursively."""
    if isinstance(value, dict) and "properties" in node:
        value = dict(value)
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = with_defaults(child, value[name])
    elif isinstance(value, list) and "items" in node:
        value = [with_defaults(node["items"], v) for v in value]
    return value


OFFSET = re.compile(r"(Z|[+-][0-9]{2}:[0-9]{2})$")


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Every CEL rule of the CRD, with the same intent in Python (a rule without one fails the
# test below, so a new rule cannot go unchecked).
CEL: dict[str, Callable[[dict[str, Any], Any], bool]] = {
    "self == oldSelf": lambda self, old: old is None or self == old,
    "has(self.quantity) != has(self.seatMap)": lambda self, _: (
        ("quantity" in self) != ("seatMap" in self)
    ),
    "has(self.seats) || has(self.labels)": lambda self, _: "seats" in self or "labels" in self,
    "!has(self.seats) || !has(self.labels) || size(self.labels) == self.seats": lambda self, _: (
        "seats" not in self or "labels" not in self or len(self["labels"]) == self["seats"]
    ),
    "!(self.opensAt.matches('(Z|[+-][0-9]{2}:[0-9]{2})$') && "
    "self.closesAt.matches('(Z|[+-][0-9]{2}:[0-9]{2})$')) || "
    "timestamp(self.closesAt) > timestamp(self.opensAt)": lambda self, _: (
        not (OFFSET.search(self["opensAt"]) and OFFSET.search(self["closesAt"]))
        or _timestamp(self["closesAt"]) > _timestamp(self["opensAt"])
    ),
    "self.opensAt.matches('(Z|[+-][0-9]{2}:[0-9]{2})$') || "
    "self.closesAt.matches('(Z|[+-][0-9]{2}:[0-9]{2})$') || self.closesAt > self.opensAt": lambda self, _: (  # noqa: E501
        bool(OFFSET.search(self["opensAt"]) or OFFSET.search(self["closesAt"]))
        or self["closesAt"] > self["opensAt"]
    ),
    "!has(self.maxActive) || !has(self.batchSize) || self.maxActive >= self.batchSize": lambda self, _: (  # noqa: E501
        "maxActive" not in self or "batchSize" not in self or self["maxActive"] >= self["batchSize"]
    ),
}


def rules_with_values(
    node: dict[str, Any],
    value: Any,
    path: str = "",
) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(path, rule, value the rule sees) for every CEL rule that applies to `value`."""
    for rule in node.get("x-kubernetes-validations") or []:
        yield path, rule, value
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name in value:
                yield from rules_with_values(child, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            yield from rules_with_values(node["items"], item, f"{path}[{i}]")


def normal(rule: str) -> str:
    return " ".join(rule.split())


def api_server_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """What the API server would answer to `kubectl apply` of `obj` (schema, then CEL)."""
    validator = jsonschema.Draft7Validator(json_schema(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if errors:
        return errors
    defaulted = with_defaults(schema, obj)
    for path, rule, value in rules_with_values(schema, defaulted):
        if not CEL[normal(rule["rule"])](value, None):
            errors.append(f"{path.lstrip('.')}: {normal(rule['message'])}")
    return errors


def test_every_cel_rule_has_its_intent_in_python(schema: dict[str, Any]) -> None:
    def every_rule(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                assert rule.get("message"), f"rule {rule['rule']!r} has no message for people"
                yield normal(rule["rule"])
            for child in node.values():
                yield from every_rule(child)
        elif isinstance(node, list):
            for child in node:
                yield from every_rule(child)

    rules = set(every_rule(schema))
    assert rules == set(CEL)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_examples_validate_against_the_crd(schema: dict[str, Any], path: Path) -> None:
    manifest = load(path)
    assert manifest["apiVersion"] == "flashsale.io/v1alpha1" and manifest["kind"] == "FlashSale"
    assert api_server_errors(schema, manifest) == []
    # and the operator turns each into a sale parse_sale accepts
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


BAD = {
    "closes before it opens": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00+01:00", closesAt="2027-03-20T11:00:00+01:00"
        ),
        "spec.schedule: closesAt must be after opensAt",
        "spec.schedule.closesAt: must be after spec.schedule.opensAt (2027-03-20T10:00:00+00:00 "
        "is not after 2027-03-20T11:00:00+00:00)",
    ),
    "closes before it opens, wall-clock times": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00", closesAt="2027-03-20T09:00:00"
        ),
        "spec.schedule: closesAt must be after opensAt",
        "spec.schedule.closesAt: must be after spec.schedule.opensAt (2027-03-20T08:00:00+00:00 "
        "is not after 2027-03-20T11:00:00+00:00)",
    ),
    "both quantity and a seat map": (
        lambda s: s["inventory"].update(
            seatMap={"sections": [{"name": "Floor", "rows": [{"name": "A", "seats": 10}]}]}
        ),
        "spec.inventory: give exactly one of inventory.quantity (a number of units) or "
        "inventory.seatMap (sections of rows of seats)",
        "spec.inventory: give exactly one of quantity (a number of units) or seatMap "
        "(sections of rows of seats), not both",
    ),
    "more let in at once than may be inside": (
        lambda s: s["admission"].update(batchSize=600, maxActive=500),
        "spec.admission: admission.maxActive must be at least admission.batchSize",
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
        "spec.inventory.seatMap.sections[0].rows[0]: seats must equal the number of labels "
        "(or leave seats out)",
        "spec.inventory.seatMap.sections[0].rows[0].seats: is 3 but 2 labels are given; make "
        "them agree (or leave seats out)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_manifests_are_refused_with_a_reason_to_act_on(
    schema: dict[str, Any], case: str
) -> None:
    change, by_api_server, by_operator = BAD[case]
    manifest = example_manifest()
    change(manifest["spec"])
    assert api_server_errors(schema, manifest) == [by_api_server]
    # the operator's own check (the same parse_sale the admin API runs) says it too, in the
    # manifest's words: this message is what status.conditions[Accepted] carries
    with pytest.raises(ValidationError) as info:
        spec.validate(manifest["metadata"]["name"], manifest["spec"])
    assert str(info.value) == by_operator


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda s: s["inventory"].update(quantity=0), "spec.inventory.quantity: 0 is less than"),
        (lambda s: s["product"].update(currency="euro"), "spec.product.currency: 'euro' does not"),
        (lambda s: s["schedule"].update(opensAt="tomorrow"), "spec.schedule.opensAt: 'tomorrow'"),
        (lambda s: s.update(perShopperLimt=2), ": Additional properties are not allowed"),
        (
            lambda s: s["scaling"]["target"].update(kind="StatefulSet"),
            "spec.scaling.target.kind: 'StatefulSet' is not one of",
        ),
    ],
)
def test_the_schema_refuses_malformed_fields(
    schema: dict[str, Any], change: Callable[[dict[str, Any]], None], error: str
) -> None:
    manifest = example_manifest()
    change(manifest["spec"])
    errors = api_server_errors(schema, manifest)
    assert any(error in e for e in errors), errors


def test_a_changed_sale_id_is_refused_by_the_transition_rule(schema: dict[str, Any]) -> None:
    sale_id = schema["properties"]["spec"]["properties"]["saleId"]
    [rule] = sale_id["x-kubernetes-validations"]
    assert not CEL[normal(rule["rule"])]("new-id", "old-id")
    assert CEL[normal(rule["rule"])]("same", "same")


def test_defaults_fill_what_a_manifest_leaves_out(schema: dict[str, Any]) -> None:
    minimal = {
        "apiVersion": "flashsale.io/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": "tiny"},
        "spec": {
            "product": {"name": "Tiny"},
            "inventory": {"quantity": 5},
            "schedule": {"opensAt": "2027-01-01T10:00:00", "closesAt": "2027-01-01T11:00:00"},
        },
    }
    assert api_server_errors(schema, minimal) == []
    defaulted = with_defaults(schema, minimal)["spec"]
    assert defaulted["admission"] == {
        "batchSize": 100,
        "batchIntervalMs": 1000,
        "maxActive": 500,
        "admissionTtlSeconds": 600,
        "abandonAfterSeconds": 60,
    }
    assert defaulted["prewarm"] == {"leadSeconds": 300}
    assert defaulted["schedule"]["timeZone"] == "UTC"
    # the operator reaches the same sale with or without the API server's defaults
    assert spec.validate("tiny", minimal["spec"])[1] == spec.validate("tiny", defaulted)[1]


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
