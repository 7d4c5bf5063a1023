"""The FlashSale CRD on a real kube-apiserver: what ops meet when they `kubectl apply`.

The server compiles every CEL rule and prices it against its cost budget when the CRD is
created (a rule over too large a list is refused there), validates each FlashSale against the
schema and the rules, fills in defaults, and prints the columns of `kubectl get fs`. These tests
read all of it back from the server: nothing here re-implements Kubernetes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.facts import Facts
from tests.support.kubernetes import CRD_FILE, ControlPlane, create_namespace

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
NAMESPACE = "crd-tests"
FLASHSALES = f"/apis/flashsale.io/v1alpha1/namespaces/{NAMESPACE}/flashsales"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
NOT_CHECKED = (
    "<nil>: Invalid value: null: some validation rules were not checked because the object was "
    "invalid; correct the existing errors to complete validation"
)


def load(path: Path) -> dict[str, Any]:
    """A manifest as `kubectl apply` reads it: timestamps stay strings (YAML 1.1 would turn an
    unquoted one into a datetime)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.fixture(scope="module")
def namespace(admin: httpx.Client, flashsale_crd: dict[str, Any]) -> str:
    return create_namespace(admin, NAMESPACE)


@pytest.fixture
def clean(admin: httpx.Client, namespace: str) -> Iterator[None]:
    """Each test starts and ends with no FlashSale in the namespace (no finalizer is set
    without the operator, so a delete is immediate)."""
    admin.delete(FLASHSALES)
    yield
    admin.delete(FLASHSALES)


def create(admin: httpx.Client, manifest: dict[str, Any]) -> httpx.Response:
    """POST with strict field validation: an unknown field is an error, as `kubectl apply`
    (strict by default since 1.27) reports it."""
    return admin.post(FLASHSALES, params={"fieldValidation": "Strict"}, json=manifest)


def quantity_sale() -> dict[str, Any]:
    return load(REPO / "examples" / "quantity-sale.yaml")


def every_rule(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield from node.get("x-kubernetes-validations") or []
        for child in node.values():
            yield from every_rule(child)
    elif isinstance(node, list):
        for child in node:
            yield from every_rule(child)


def test_the_crd_is_established_with_every_rule_compiled(
    flashsale_crd: dict[str, Any], cluster_facts: Facts
) -> None:
    """Established means the server compiled every CEL rule within its cost budget (it refuses
    the CRD otherwise) and serves the kind."""
    conditions = {c["type"]: c for c in flashsale_crd["status"]["conditions"]}
    assert conditions["NamesAccepted"]["status"] == "True"
    assert conditions["Established"]["status"] == "True"
    assert flashsale_crd["status"]["acceptedNames"]["shortNames"] == ["fs", "fsale"]
    served = flashsale_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sent = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]
    rules = list(every_rule(served))
    assert len(rules) == len(list(every_rule(sent["openAPIV3Schema"]))) == 8
    assert all(rule.get("message") for rule in rules), "every rule says why to people"
    cluster_facts.record("crd_accepted", True)
    cluster_facts.record("crd_cel_rules", len(rules))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_accepted(
    admin: httpx.Client, clean: None, path: Path, cluster_facts: Facts
) -> None:
    manifest = load(path)
    answer = create(admin, manifest)
    assert answer.status_code == 201, answer.text
    assert answer.headers.get("Warning") is None, answer.headers.get("Warning")
    stored = answer.json()
    assert stored["spec"]["schedule"] == {**{"timeZone": "UTC"}, **manifest["spec"]["schedule"]}
    cluster_facts.add("examples_accepted")


def test_the_server_fills_in_the_defaults(admin: httpx.Client, clean: None) -> None:
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
    answer = create(admin, minimal)
    assert answer.status_code == 201, answer.text
    spec = answer.json()["spec"]
    assert spec["admission"] == {
        "batchSize": 100,
        "batchIntervalMs": 1000,
        "maxActive": 500,
        "admissionTtlSeconds": 600,
        "abandonAfterSeconds": 60,
    }
    assert spec["prewarm"] == {"leadSeconds": 300}
    assert spec["schedule"]["timeZone"] == "UTC"
    assert (spec["perShopperLimit"], spec["holdSeconds"]) == (2, 300)
    assert spec["product"] == {"name": "Tiny", "priceCents": 0, "currency": "USD"}
    assert spec["shoppers"] == {
        "identityRequired": False,
        "proofOfWork": {"enabled": False, "difficulty": 18},
    }


@pytest.mark.parametrize(
    "shoppers",
    [
        {"identityRequired": True},
        {"identityRequired": True, "proofOfWork": {"enabled": False, "difficulty": 20}},
        {"proofOfWork": {"enabled": True}},
        {"identityRequired": False, "proofOfWork": {"enabled": True, "difficulty": 26}},
    ],
)
def test_who_may_take_a_place_is_accepted(
    admin: httpx.Client, clean: None, shoppers: dict[str, Any], cluster_facts: Facts
) -> None:
    """spec.shoppers: identity or a proof of work (not both: BAD), stored with the defaults
    of what was left out."""
    manifest = quantity_sale()
    manifest["spec"]["shoppers"] = shoppers
    answer = create(admin, manifest)
    assert answer.status_code == 201, answer.text
    stored = answer.json()["spec"]["shoppers"]
    assert stored["identityRequired"] is shoppers.get("identityRequired", False)
    sent_pow = shoppers.get("proofOfWork", {})
    assert stored["proofOfWork"] == {
        "enabled": sent_pow.get("enabled", False),
        "difficulty": sent_pow.get("difficulty", 18),
    }
    cluster_facts.add("shoppers_specs_accepted")


def seat_map(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"seatMap": {"sections": [{"name": "Floor", "rows": list(rows)}]}}


def invalid(details: str) -> str:
    return f'FlashSale.flashsale.io "spring-drop" is invalid: {details}'


# One bad FlashSale per CEL rule and per schema constraint that matters to ops, with the very
# message `kubectl apply` prints.
BAD: dict[str, tuple[Callable[[dict[str, Any]], None], int, str]] = {
    "closes before it opens (with offsets)": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00+01:00", closesAt="2027-03-20T13:00:00+03:00"
        ),
        422,
        invalid("spec.schedule: Invalid value: closesAt must be after opensAt"),
    ),
    "closes before it opens (wall-clock times)": (
        lambda s: s["schedule"].update(
            opensAt="2027-03-20T12:00:00", closesAt="2027-03-20T09:00:00"
        ),
        422,
        invalid("spec.schedule: Invalid value: closesAt must be after opensAt"),
    ),
    "both a quantity and a seat map": (
        lambda s: s["inventory"].update(seat_map({"name": "A", "seats": 10})),
        422,
        invalid(
            "spec.inventory: Invalid value: give exactly one of inventory.quantity (a number of "
            "units) or inventory.seatMap (sections of rows of seats)"
        ),
    ),
    "neither a quantity nor a seat map": (
        lambda s: s.update(inventory={}),
        422,
        invalid(
            "spec.inventory: Invalid value: give exactly one of inventory.quantity (a number of "
            "units) or inventory.seatMap (sections of rows of seats)"
        ),
    ),
    "more let in at once than may be inside": (
        lambda s: s["admission"].update(batchSize=600, maxActive=500),
        422,
        invalid(
            "spec.admission: Invalid value: admission.maxActive must be at least "
            "admission.batchSize"
        ),
    ),
    "seat labels that disagree with the count": (
        lambda s: s.update(inventory=seat_map({"name": "A", "seats": 3, "labels": ["1", "2"]})),
        422,
        invalid(
            "spec.inventory.seatMap.sections[0].rows[0]: Invalid value: seats must equal the "
            "number of labels (or leave seats out)"
        ),
    ),
    "a row with neither seats nor labels": (
        lambda s: s.update(inventory=seat_map({"name": "A"})),
        422,
        invalid(
            "spec.inventory.seatMap.sections[0].rows[0]: Invalid value: a row needs seats (how "
            "many) or labels (their names)"
        ),
    ),
    "no stock": (
        lambda s: s["inventory"].update(quantity=0),
        422,
        invalid(
            "spec.inventory.quantity: Invalid value: 0: spec.inventory.quantity in body should "
            "be greater than or equal to 1"
        ),
    ),
    "a currency that is not ISO 4217": (
        lambda s: s["product"].update(currency="euro"),
        422,
        invalid(
            'spec.product.currency: Invalid value: "euro": spec.product.currency in body '
            "should match '^[A-Z]{3}$'"
        ),
    ),
    "a time that is not ISO 8601": (
        lambda s: s["schedule"].update(opensAt="tomorrow"),
        422,
        invalid(
            'spec.schedule.opensAt: Invalid value: "tomorrow": spec.schedule.opensAt in body '
            "should match '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
            "(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?$'"
        ),
    ),
    "a misspelt field": (
        lambda s: s.update(perShopperLimt=2),
        400,
        'FlashSale in version "v1alpha1" cannot be handled as a FlashSale: strict decoding '
        'error: unknown field "spec.perShopperLimt"',
    ),
    "a scaling target that is not an HPA or a Deployment": (
        lambda s: s["scaling"]["target"].update(kind="StatefulSet"),
        422,
        invalid(
            '[spec.scaling.target.kind: Unsupported value: "StatefulSet": supported values: '
            f'"HorizontalPodAutoscaler", "Deployment", {NOT_CHECKED}]'
        ),
    ),
    "a sale id that cannot be a URL segment": (
        lambda s: s.update(saleId="Spring_Drop"),
        422,
        invalid(
            'spec.saleId: Invalid value: "Spring_Drop": spec.saleId in body should match '
            "'^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'"
        ),
    ),
    "no product": (
        lambda s: s.pop("product"),
        422,
        invalid(f"[spec.product: Required value, {NOT_CHECKED}]"),
    ),
    "batches faster than 50 ms": (
        lambda s: s["admission"].update(batchIntervalMs=10),
        422,
        invalid(
            "spec.admission.batchIntervalMs: Invalid value: 10: spec.admission.batchIntervalMs "
            "in body should be greater than or equal to 50"
        ),
    ),
    "holds shorter than 10 s": (
        lambda s: s.update(holdSeconds=5),
        422,
        invalid(
            "spec.holdSeconds: Invalid value: 5: spec.holdSeconds in body should be greater "
            "than or equal to 10"
        ),
    ),
    "more than 100 sections": (
        lambda s: s.update(
            inventory={
                "seatMap": {
                    "sections": [
                        {"name": f"S{i}", "rows": [{"name": "A", "seats": 1}]} for i in range(101)
                    ]
                }
            }
        ),
        422,
        invalid(
            "[spec.inventory.seatMap.sections: Too many: 101: must have at most 100 items, "
            f"{NOT_CHECKED}]"
        ),
    ),
    "identity required and a proof of work": (
        lambda s: s.update(shoppers={"identityRequired": True, "proofOfWork": {"enabled": True}}),
        422,
        invalid(
            "spec.shoppers: Invalid value: shoppers.identityRequired and "
            "shoppers.proofOfWork.enabled cannot both be true: a signed-in shopper has one place "
            "already, proof of work is for anonymous sales"
        ),
    ),
    "a proof of work harder than 26 bits": (
        lambda s: s.update(shoppers={"proofOfWork": {"enabled": True, "difficulty": 27}}),
        422,
        invalid(
            "spec.shoppers.proofOfWork.difficulty: Invalid value: 27: "
            "spec.shoppers.proofOfWork.difficulty in body should be less than or equal to 26"
        ),
    ),
    "no replicas wanted": (
        lambda s: s["scaling"].update(replicas=0),
        422,
        invalid(
            "spec.scaling.replicas: Invalid value: 0: spec.scaling.replicas in body should be "
            "greater than or equal to 1"
        ),
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_flashsales_are_refused_by_the_server(
    admin: httpx.Client, clean: None, case: str, cluster_facts: Facts
) -> None:
    change, status, message = BAD[case]
    manifest = quantity_sale()
    change(manifest["spec"])
    answer = create(admin, manifest)
    assert answer.status_code == status, answer.text
    assert answer.json()["message"] == message
    assert admin.get(f"{FLASHSALES}/spring-drop").status_code == 404
    cluster_facts.add("bad_specs_refused")


def test_every_cel_rule_has_a_bad_flashsale(flashsale_crd: dict[str, Any]) -> None:
    """A new rule needs its row in BAD: the refusals above name every rule's message."""
    schema = flashsale_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    refused = " ".join(message for _, _, message in BAD.values())
    for rule in every_rule(schema):
        if rule["rule"] == "self == oldSelf":
            continue  # a transition rule: test_the_sale_id_cannot_change
        assert " ".join(rule["message"].split()) in refused, rule["message"]


def test_the_sale_id_cannot_change(admin: httpx.Client, clean: None) -> None:
    manifest = quantity_sale()
    manifest["spec"]["saleId"] = "spring-drop-2027"
    assert create(admin, manifest).status_code == 201
    stored = admin.get(f"{FLASHSALES}/spring-drop").json()
    stored["spec"]["saleId"] = "another-sale"
    answer = admin.put(f"{FLASHSALES}/spring-drop", json=stored)
    assert answer.status_code == 422, answer.text
    assert answer.json()["message"] == invalid(
        'spec.saleId: Invalid value: "another-sale": saleId cannot change; create a new '
        "FlashSale for another sale"
    )
    stored["spec"]["saleId"] = "spring-drop-2027"
    stored["spec"]["product"]["priceCents"] = 9900
    assert admin.put(f"{FLASHSALES}/spring-drop", json=stored).status_code == 200


def merge_patch_status(admin: httpx.Client, name: str, status: dict[str, Any]) -> httpx.Response:
    return admin.patch(
        f"{FLASHSALES}/{name}/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    )


# What the operator writes (operator/handlers.py, operator/status.py): an accepted sale with
# its figures, and a refused one.
OPEN_STATUS: dict[str, Any] = {
    "saleId": "spring-drop",
    "phase": "Open",
    "phaseSince": "2027-03-20T11:00:00Z",
    "observedGeneration": 1,
    "counters": {
        "waiting": 18423,
        "admitted": 900,
        "active": 310,
        "held": 40,
        "sold": 120,
        "remaining": 340,
        "stock": 500,
    },
    "schedule": {
        "prewarmAt": "2027-03-20T10:55:00Z",
        "opensAt": "2027-03-20T11:00:00Z",
        "closesAt": "2027-03-20T13:00:00Z",
    },
    "nextTransition": {"event": "Closed", "at": "2027-03-20T13:00:00Z"},
    "transitions": {"Scheduled": "2027-03-19T08:00:00Z", "Open": "2027-03-20T11:00:00Z"},
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Applied",
            "message": "sale spring-drop created",
            "lastTransitionTime": "2027-03-19T08:00:00Z",
            "observedGeneration": 1,
        }
    ],
}
REFUSED_MESSAGE = (
    "spec.inventory.quantity: cannot be lower than what is sold or held (20 sold, 0 held)"
)
INVALID_STATUS: dict[str, Any] = {
    "phase": "Invalid",
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Accepted",
            "status": "False",
            "reason": "Refused",
            "message": REFUSED_MESSAGE,
            "lastTransitionTime": "2027-03-19T08:00:00Z",
            "observedGeneration": 1,
        }
    ],
}


@pytest.fixture
def two_sales(admin: httpx.Client, clean: None) -> None:
    """spring-drop open with its figures, bad-drop refused, as the operator leaves them."""
    for name, status in (("spring-drop", OPEN_STATUS), ("bad-drop", INVALID_STATUS)):
        manifest = quantity_sale()
        manifest["metadata"]["name"] = name
        assert create(admin, manifest).status_code == 201
        answer = merge_patch_status(admin, name, status)
        assert answer.status_code == 200, answer.text


def test_status_times_are_date_times(admin: httpx.Client, two_sales: None) -> None:
    """format: date-time on the status times: the operator's UTC times are taken, anything
    else is refused (CEL and clients see timestamps)."""
    answer = merge_patch_status(admin, "spring-drop", {"phaseSince": "yesterday"})
    assert answer.status_code == 422
    assert answer.json()["message"] == invalid(
        '[status.phaseSince: Invalid value: "yesterday": phaseSince in body must be of type '
        f'date-time: "yesterday", {NOT_CHECKED}]'
    )
    answer = merge_patch_status(admin, "spring-drop", {"transitions": {"Closed": "soon"}})
    assert answer.status_code == 422
    assert "status.transitions.Closed" in answer.json()["message"]


def test_wall_clock_times_stay_allowed_in_the_spec(admin: httpx.Client, clean: None) -> None:
    """spec.schedule times are not format: date-time on purpose: that format requires an
    offset, and a time without one (wall-clock time in timeZone, as in the examples) is how
    ops write most sales. The server takes both forms."""
    for opens, closes in (
        ("2027-03-20T12:00:00", "2027-03-20T14:00:00"),
        ("2027-03-20T12:00:00+09:00", "2027-03-20T14:00:00Z"),
    ):
        manifest = quantity_sale()
        manifest["spec"]["schedule"].update(opensAt=opens, closesAt=closes)
        assert create(admin, manifest).status_code == 201
        admin.delete(f"{FLASHSALES}/spring-drop")


def table(admin: httpx.Client, wide: bool) -> tuple[list[str], dict[str, list[Any]]]:
    """`kubectl get fs` as the server prints it: the Table answer kubectl renders."""
    answer = admin.get(FLASHSALES, headers={"Accept": TABLE}, params={"includeObject": "None"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "Table"
    columns = [c["name"] for c in body["columnDefinitions"] if wide or c["priority"] == 0]
    indexes = [i for i, c in enumerate(body["columnDefinitions"]) if wide or c["priority"] == 0]
    rows = {r["cells"][0]: [r["cells"][i] for i in indexes] for r in body["rows"]}
    return columns, rows


def test_kubectl_get_columns(admin: httpx.Client, two_sales: None, cluster_facts: Facts) -> None:
    columns, rows = table(admin, wide=False)
    assert columns == ["Name", "Phase", "Accepted", "Opens", "Stock", "Sold", "Waiting", "Age"]
    assert rows["spring-drop"][:7] == [
        "spring-drop",
        "Open",
        "Applied",
        "2027-03-20T12:00:00",
        500,
        120,
        18423,
    ]
    # a refused sale says so, and -o wide says why
    assert rows["bad-drop"][1:3] == ["Invalid", "Refused"]
    columns, rows = table(admin, wide=True)
    assert columns[8:] == ["Remaining", "Active", "Sale", "Next", "Message"]
    assert rows["spring-drop"][8:] == [
        340,
        310,
        "spring-drop",
        "Closed",
        "sale spring-drop created",
    ]
    assert rows["bad-drop"][-1] == REFUSED_MESSAGE
    cluster_facts.record("printer_columns", len(columns) - 1)


def test_kubectl_get_fs_prints_them(kube: ControlPlane, two_sales: None) -> None:
    """The same through /usr/bin/kubectl and the short name ops type."""
    result = kube.kubectl("get", "fs", "-n", NAMESPACE)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "ACCEPTED",
        "OPENS",
        "STOCK",
        "SOLD",
        "WAITING",
        "AGE",
    ]
    line = next(ln for ln in lines if ln.startswith("bad-drop"))
    assert line.split()[1:3] == ["Invalid", "Refused"]
    result = kube.kubectl("get", "fsale", "-n", NAMESPACE, "-o", "wide")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[-5:] == [
        "REMAINING",
        "ACTIVE",
        "SALE",
        "NEXT",
        "MESSAGE",
    ]
    assert REFUSED_MESSAGE in result.stdout


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from fields(child, f"{path}.{name}")
    if "items" in schema:
        yield from fields(schema["items"], path)


@pytest.mark.parametrize("part", ["spec", "status"])
def test_kubectl_explain_describes_every_field(
    kube: ControlPlane, flashsale_crd: dict[str, Any], part: str
) -> None:
    """kubectl explain reads the server's OpenAPI: every field of spec and status has a
    description there, and explain shows each."""
    schema = flashsale_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undescribed = [
        path
        for path, node in fields(schema["properties"][part], part)
        if not node.get("description")
    ]
    assert undescribed == []
    result = kube.kubectl("explain", f"flashsale.{part}", "--recursive")
    assert result.returncode == 0, result.stderr
    for path, _ in fields(schema["properties"][part], part):
        assert path.rsplit(".", 1)[-1] in result.stdout, path
    for leaf in (f"flashsale.{part}.{name}" for name in schema["properties"][part]["properties"]):
        result = kube.kubectl("explain", leaf)
        assert result.returncode == 0, result.stderr
        node = schema["properties"][part]["properties"][leaf.rsplit(".", 1)[-1]]
        first_words = " ".join(node["description"].split()[:4])
        assert first_words in " ".join(result.stdout.split()), leaf


def test_a_service_account_without_rbac_cannot_touch_flashsales(
    kube: ControlPlane, admin: httpx.Client, namespace: str
) -> None:
    """RBAC is on: a ServiceAccount with no binding is refused (what the operator's would get
    without the chart's Role)."""
    answer = admin.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts", json={"metadata": {"name": "nobody"}}
    )
    assert answer.status_code == 201, answer.text
    token = kube.service_account_token(namespace, "nobody")
    with kube.client(token=token) as client:
        answer = client.get(FLASHSALES)
    assert answer.status_code == 403
    assert answer.json()["message"] == (
        'flashsales.flashsale.io is forbidden: User "system:serviceaccount:crd-tests:nobody" '
        'cannot list resource "flashsales" in API group "flashsale.io" in the namespace '
        '"crd-tests"'
    )


def test_example_manifests_are_unchanged_by_the_server(admin: httpx.Client, clean: None) -> None:
    """What is applied is what is stored (plus defaults): no field is pruned silently."""
    manifest = load(REPO / "examples" / "seated-concert.yaml")
    answer = create(admin, manifest)
    assert answer.status_code == 201, answer.text
    stored = answer.json()["spec"]
    sent = copy.deepcopy(manifest["spec"])
    assert {k: stored[k] for k in sent} == {
        **sent,
        "product": {**sent["product"]},
        "schedule": {**sent["schedule"]},
    }
