"""The Helm chart installed for real: Helm's own SDK (helm-python-sdk) against the test
kube-apiserver, for every charts/flashsale/ci/*-values.yaml scenario: install, upgrade,
uninstall, each in its own namespace.

What this shows: every object the chart renders is accepted by the API server (schemas,
admission, RBAC escalation checks, `lookup` of the kept token Secret), the hooks run in order,
the operator's ServiceAccount may make exactly the calls operator/RBAC.md lists, and the CRD
and kopf's peering objects install and upgrade.

What it cannot show: no pod ever runs (there is no kubelet, scheduler or controller manager).
Deployments stay at zero pods, the HPA never scales. Helm waits for a hook Job to complete,
and nothing would complete it: `jobs_completed` stands in for the Job controller and marks
each Job succeeded through its status subresource (the server validates that status), so the
migration hook goes through as on a cluster where `flashsale migrate` succeeded. The
install, upgrade and uninstall calls get a timeout so that a hook that never completes fails
the test instead of hanging it.

The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) are not installed here (they
are not available offline): the hardened scenario is installed with those two objects off;
tests/deploy/test_chart.py checks their rendering.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml

from tests.support.facts import Facts
from tests.support.kubernetes import (
    CRD_NAME,
    ControlPlane,
    Resources,
    create_namespace,
    established,
    install_crd,
    jobs_completed,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "flashsale"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
RELEASE = "flashsale"
TIMEOUT = 120  # seconds Helm may wait for hooks; they complete in well under one
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# The public paths of the shopper pages and the API (api/app.py ROUTES); /admin, /metrics,
# /openapi.json and the probes stay inside the cluster.
PUBLIC_PATHS = [
    {"path": "/", "pathType": "Exact"},
    {"path": "/sales", "pathType": "Prefix"},
    {"path": "/static", "pathType": "Prefix"},
    {"path": "/api", "pathType": "Prefix"},
]


def scenario_values(scenario: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    # One release in a cluster owns the FlashSale CRD (the test session's is applied from its
    # file); test_the_crd_follows_the_chart covers crds.install=true.
    values["crds"] = {"install": False}
    metrics = values.setdefault("metrics", {})
    for kind in ("serviceMonitor", "prometheusRule"):  # no Prometheus Operator CRDs here
        metrics.setdefault(kind, {})["enabled"] = False
    return values


def manifest_objects(release: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


def hooks_of(chart: Path, values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects = [
        d
        for name, text in rendered.items()
        if not name.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    return [o for o in objects if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]


def rbac_rules() -> list[tuple[str, str, list[str], str, bool]]:
    """(apiGroup, resource, verbs, scope, peering only) of every row of operator/RBAC.md: the
    calls the operator makes, which the chart must allow and nothing more."""
    rules = []
    peering = False
    for line in (REPO / "operator" / "RBAC.md").read_text().splitlines():
        if line.startswith("Only with peering"):
            peering = True
        found = re.search(r"\| `([^`]*)` / `([^`]+)` / ([a-z, ]+) \| (namespace|cluster) \|", line)
        if found:
            group, resource, verbs, scope = found.groups()
            group = "" if group == '""' else group
            rules.append((group, resource, [v.strip() for v in verbs.split(",")], scope, peering))
    assert len(rules) == 10, rules
    return rules


def can(client: httpx.Client, verb: str, group: str, resource: str, namespace: str = "") -> bool:
    """A SelfSubjectAccessReview: RBAC's own answer for whoever `client` logs in as."""
    subresource = ""
    if "/" in resource:
        resource, subresource = resource.split("/", 1)
    answer = client.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        json={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                }
            },
        },
    )
    assert answer.status_code == 201, answer.text
    return bool(answer.json()["status"]["allowed"])


def served_namespaces(values: dict[str, Any], namespace: str) -> list[str]:
    operator = values.get("operator", {})
    if operator.get("watchAllNamespaces"):
        return []
    return operator.get("watchNamespaces") or [namespace]


def secret_value(admin: httpx.Client, namespace: str, name: str, key: str) -> str:
    answer = admin.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert answer.status_code == 200, answer.text
    return base64.b64decode(answer.json()["data"][key]).decode()


def check_operator_rbac(
    kube: ControlPlane, admin: httpx.Client, namespace: str, values: dict[str, Any]
) -> None:
    """As the operator's ServiceAccount (a TokenRequest token, so RBAC sees it as the pod
    would): every call of operator/RBAC.md is allowed where it serves, nothing else is."""
    token = kube.service_account_token(namespace, f"{RELEASE}-operator")
    served = served_namespaces(values, namespace)
    peering = values.get("operator", {}).get("peering", {}).get("enabled", False)
    with kube.client(token=token) as operator:
        for group, resource, verbs, scope, peering_only in rbac_rules():
            if peering_only and not peering:
                continue
            if peering_only and (resource == "clusterkopfpeerings") == bool(served):
                continue  # KopfPeerings serve chosen namespaces, the cluster one every one
            places = [""] if scope == "cluster" or not served else served
            for where in places:
                for verb in verbs:
                    assert can(operator, verb, group, resource, where), (verb, resource, where)
            # where it does not serve, it may not
            if scope == "namespace" and served:
                assert not can(operator, verbs[0], group, resource, "kube-system"), resource
        for where in served or [namespace]:
            assert not can(operator, "get", "", "secrets", where), "the operator reads no Secret"
            assert not can(operator, "create", "apps", "deployments", where)
            assert not can(operator, "patch", "apps", "deployments/scale", where)
        assert not can(operator, "delete", "apiextensions.k8s.io", "customresourcedefinitions")
        # a real call, as kopf makes it: the FlashSales of a served namespace
        for where in served or [namespace]:
            answer = operator.get(f"/apis/flashsale.io/v1alpha1/namespaces/{where}/flashsales")
            assert answer.status_code == 200, answer.text


def check_identity(admin: httpx.Client, namespace: str, values: dict[str, Any]) -> None:
    """The shop's identity provider as the server stored the API and operator Deployments:
    its settings in both, the JWKS Secret mounted read-only where the settings say; nothing
    of it where the scenario sets no provider. (No pod runs, so no process reads them here:
    tests/deploy/test_chart.py parses them as settings.)"""
    identity = values.get("identity") or {}
    secret = (identity.get("jwksSecret") or {}).get("name")
    for role in ("api", "operator"):
        deployment = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-{role}")
        assert deployment.status_code == 200, deployment.text
        pod = deployment.json()["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert ("FLASHSALE_IDENTITY_ISSUER" in env) == bool(identity), (role, env)
        if not identity:
            continue
        assert env["FLASHSALE_IDENTITY_ISSUER"] == identity["issuer"]
        assert env["FLASHSALE_IDENTITY_AUDIENCE"] == identity["audience"]
        assert env.get("FLASHSALE_IDENTITY_JWKS_URL") == identity.get("jwksUrl")
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if secret:
            path = env["FLASHSALE_IDENTITY_JWKS_FILE"]
            assert path == f"{mounts['identity-jwks']['mountPath']}/jwks.json"
            assert mounts["identity-jwks"]["readOnly"] is True
            assert volumes["identity-jwks"]["secret"]["secretName"] == secret
        else:
            assert "identity-jwks" not in volumes


def kept_after_uninstall(values: dict[str, Any], hooks: list[dict[str, Any]]) -> set[str]:
    """What `helm uninstall` leaves on purpose (chart README): the token Secret
    (helm.sh/resource-policy: keep) and hook objects other than succeeded Jobs."""
    kept = set()
    if not values.get("tokens", {}).get("existingSecret"):
        kept.add(f"Secret/{RELEASE}-tokens")
    for hook in hooks:
        if hook["kind"] != "Job":
            kept.add(f"{hook['kind']}/{hook['metadata']['name']}")
    return kept


def helm_config(kube: ControlPlane, namespace: str, request: pytest.FixtureRequest) -> helm.Config:
    """Helm's configuration for this API server (the admin kubeconfig), closed after the test."""
    config = helm.Config(kubeconfig_path=str(kube.kubeconfig), namespace=namespace)
    request.addfinalizer(config.close)
    return config


@pytest.fixture(scope="module")
def resources(admin: httpx.Client, flashsale_crd: dict[str, Any]) -> Resources:
    return Resources(admin)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_installs_upgrades_and_uninstalls(
    request: pytest.FixtureRequest,
    kube: ControlPlane,
    admin: httpx.Client,
    resources: Resources,
    scenario: str,
    cluster_facts: Facts,
) -> None:
    namespace = create_namespace(admin, f"chart-{scenario}")
    values = scenario_values(scenario)
    for served in served_namespaces(values, namespace):
        if served != namespace:
            create_namespace(admin, served)
    config = helm_config(kube, namespace, request)
    hooks = hooks_of(CHART, values, namespace)
    with jobs_completed(kube, namespace) as jobs:
        release = config.install(CHART, RELEASE, values, namespace=namespace, timeout=TIMEOUT)
    assert release["status"] == "deployed" and release["revision"] == 1
    objects = manifest_objects(release)
    for obj in objects:
        answer = admin.get(resources.of(obj, namespace))
        assert answer.status_code == 200, f"{obj['kind']} {obj['metadata']['name']}: missing"
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterRole",
        "ClusterRoleBinding",
    } <= kinds
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert deployments == {f"{RELEASE}-{c}" for c in ("api", "admitter", "persister", "operator")}
    autoscaling = values.get("api", {}).get("autoscaling", {}).get("enabled", True)
    assert ("HorizontalPodAutoscaler" in kinds) == autoscaling
    # the hooks ran: the migration Job completed (and was deleted), its Secret is there
    assert jobs == [f"{RELEASE}-migrate"]
    assert (
        admin.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{RELEASE}-migrate").status_code
        == 404
    )
    for hook in hooks:
        if hook["kind"] == "Secret":
            assert admin.get(resources.of(hook, namespace)).status_code == 200
    ingress = admin.get(
        f"/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{RELEASE}-api"
    ).json()
    assert [
        {"path": p["path"], "pathType": p["pathType"]}
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    ] == PUBLIC_PATHS
    check_operator_rbac(kube, admin, namespace, values)
    generated = (
        {}
        if values.get("tokens", {}).get("existingSecret")
        else {
            key: secret_value(admin, namespace, f"{RELEASE}-tokens", key)
            for key in ("token-key", "admin-token", "identity-key")
        }
    )
    check_identity(admin, namespace, values)
    cluster_facts.add("chart_scenarios_installed")

    # upgrade: a changed value reaches the cluster, generated keys stay (lookup), hooks rerun
    upgraded = copy.deepcopy(values)
    upgraded.setdefault("config", {})["logLevel"] = "ERROR"
    with jobs_completed(kube, namespace) as jobs:
        release = config.upgrade(CHART, RELEASE, upgraded, namespace=namespace, timeout=TIMEOUT)
    assert release["status"] == "deployed" and release["revision"] == 2
    assert jobs == [f"{RELEASE}-migrate"]
    api = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-api").json()
    env = {
        e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLASHSALE_LOG_LEVEL"] == "ERROR"
    for key, value in generated.items():
        assert secret_value(admin, namespace, f"{RELEASE}-tokens", key) == value, key
    cluster_facts.add("chart_scenarios_upgraded")

    # uninstall: only what the chart keeps on purpose is left, cluster-wide objects included
    config.uninstall(RELEASE, timeout=TIMEOUT)
    kept = kept_after_uninstall(values, hooks)
    left = set()
    for obj in objects:
        if admin.get(resources.of(obj, namespace)).status_code == 200:
            left.add(f"{obj['kind']}/{obj['metadata']['name']}")
    released = {f"{o['kind']}/{o['metadata']['name']}" for o in objects}
    assert left == kept & released
    for name in kept:
        kind, obj_name = name.split("/")
        assert admin.get(resources.path("v1", kind, obj_name, namespace)).status_code == 200
        assert admin.delete(resources.path("v1", kind, obj_name, namespace)).status_code == 200
    secrets = admin.get(f"/api/v1/namespaces/{namespace}/secrets").json()["items"]
    assert [s["metadata"]["name"] for s in secrets] == [], "Helm's release records are gone too"
    cluster_facts.add("chart_scenarios_uninstalled")


def test_peering_serving_every_namespace(
    request: pytest.FixtureRequest,
    kube: ControlPlane,
    admin: httpx.Client,
    resources: Resources,
    cluster_facts: Facts,
) -> None:
    """operator.peering.enabled with watchAllNamespaces: a ClusterKopfPeering (kopf's CRDs come
    from the chart's crds/), and the operator may patch it as kopf does."""
    namespace = create_namespace(admin, "chart-peering")
    values = scenario_values("defaults")
    values["operator"] = {"watchAllNamespaces": True, "peering": {"enabled": True}}
    config = helm_config(kube, namespace, request)
    with jobs_completed(kube, namespace):
        release = config.install(CHART, RELEASE, values, namespace=namespace, timeout=TIMEOUT)
    assert release["status"] == "deployed"
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        assert established(admin, crd), crd
    peering = admin.get("/apis/kopf.dev/v1/clusterkopfpeerings/flashsale")
    assert peering.status_code == 200, peering.text
    env = {
        e["name"]: e.get("value")
        for e in admin.get(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-operator"
        ).json()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLASHSALE_OPERATOR_PEERING"] == "flashsale"
    check_operator_rbac(kube, admin, namespace, values)
    token = kube.service_account_token(namespace, f"{RELEASE}-operator")
    with kube.client(token=token) as operator:
        answer = operator.patch(
            "/apis/kopf.dev/v1/clusterkopfpeerings/flashsale",
            content='{"status": {"flashsale-operator-0": {"priority": 0, "lifetime": 60}}}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert answer.status_code == 200, answer.text
    config.uninstall(RELEASE, timeout=TIMEOUT)
    assert admin.get("/apis/kopf.dev/v1/clusterkopfpeerings/flashsale").status_code == 404
    # kopf's CRDs stay (crds/: Helm never deletes them; another operator may use them)
    assert established(admin, "clusterkopfpeerings.kopf.dev")
    cluster_facts.record("peering_installed", True)


def test_the_crd_follows_the_chart(
    request: pytest.FixtureRequest,
    kube: ControlPlane,
    admin: httpx.Client,
    tmp_path: Path,
    cluster_facts: Facts,
) -> None:
    """crds.install (the default): `helm install` creates the CRD, `helm upgrade` changes it
    (Helm's crds/ folder would never upgrade it), `helm uninstall` keeps it, and a second
    release that also wants it is refused, as the chart README says."""
    assert admin.delete(f"{CRDS}/{CRD_NAME}").status_code == 200
    wait_for("deleted", lambda: admin.get(f"{CRDS}/{CRD_NAME}").status_code == 404)
    namespace = create_namespace(admin, "chart-crds")
    values: dict[str, Any] = {"migrations": {"enabled": False}}
    config = helm_config(kube, namespace, request)
    try:
        config.install(CHART, RELEASE, values, namespace=namespace, timeout=TIMEOUT)
        crd = wait_for("Established", lambda: established(admin, CRD_NAME))
        annotations = crd["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["meta.helm.sh/release-name"] == RELEASE
        columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert "Currency" not in columns

        # a new chart version whose CRD has one more printer column
        changed = tmp_path / "flashsale"
        shutil.copytree(CHART, changed)
        crd_file = changed / "files" / "crds" / f"{CRD_NAME}.yaml"
        text = crd_file.read_text()
        marker = "        - name: Age\n"
        assert marker in text
        crd_file.write_text(
            text.replace(
                marker,
                "        - name: Currency\n          type: string\n"
                "          jsonPath: .spec.product.currency\n" + marker,
            )
        )
        release = config.upgrade(changed, RELEASE, values, namespace=namespace, timeout=TIMEOUT)
        assert release["revision"] == 2
        crd = wait_for("Established", lambda: established(admin, CRD_NAME))
        columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert columns[columns.index("Currency") + 1] == "Age"

        # another release may not take it over
        other = create_namespace(admin, "chart-crds-other")
        with pytest.raises(helm.HelmError) as refused:
            config.install(CHART, "flashsale-two", values, namespace=other, timeout=TIMEOUT)
        assert 'CustomResourceDefinition "flashsales.flashsale.io"' in str(refused.value)
        assert "invalid ownership metadata" in str(refused.value)

        config.upgrade(CHART, RELEASE, values, namespace=namespace, timeout=TIMEOUT)
        config.uninstall(RELEASE, timeout=TIMEOUT)
        crd = established(admin, CRD_NAME)
        assert crd, "kept by helm.sh/resource-policy: keep"
        columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert "Currency" not in columns, "the upgrade back removed the column"
        cluster_facts.record("crd_upgraded_by_helm", True)
    finally:
        install_crd(admin)  # the file's CRD again, for whatever runs next


@pytest.fixture(scope="module", autouse=True)
def no_release_left(admin: httpx.Client) -> Iterator[None]:
    """Every test of this module uninstalls what it installed: no Helm release record (a
    Secret of type helm.sh/release.v1) is left in any namespace."""
    yield
    answer = admin.get("/api/v1/secrets", params={"fieldSelector": "type=helm.sh/release.v1"})
    assert answer.json()["items"] == []
