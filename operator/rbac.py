"""The Kubernetes API calls the operator makes, and the RBAC rules they need, as data.

`operator/RBAC.md` says the same for people; the chart renders these rules and a test checks
the chart against them; tests/kubernetes/test_operator_server.py runs the operator against a
real API server with exactly the chart's rules and fails on any refused request.
"""

from __future__ import annotations

from typing import Any

# Each entry: the calls made, why, and the rule (apiGroups/resources/verbs) they need.
# scope: "namespace" rules go in a Role per watched namespace (or a ClusterRole when the
# operator watches every namespace); "cluster" rules always need a ClusterRole.
CALLS: list[dict[str, Any]] = [
    {
        "calls": [
            "LIST + WATCH /apis/flashsale.io/v1alpha1/[namespaces/NS/]flashsales",
            "PATCH /apis/flashsale.io/v1alpha1/namespaces/NS/flashsales/NAME",
        ],
        "why": "kopf watches FlashSales; it patches them to add and remove its finalizer and "
        "to keep its bookkeeping annotations (flashsale.io/*)",
        "scope": "namespace",
        "rule": {
            "apiGroups": ["flashsale.io"],
            "resources": ["flashsales"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    },
    {
        "calls": ["PATCH /apis/flashsale.io/v1alpha1/namespaces/NS/flashsales/NAME/status"],
        "why": "phase, counters, conditions and transition times, written by the operator's "
        "own client (operator/kube.py), not by kopf",
        "scope": "namespace",
        "rule": {
            "apiGroups": ["flashsale.io"],
            "resources": ["flashsales/status"],
            "verbs": ["get", "patch"],
        },
    },
    {
        "calls": ["(none directly)"],
        "why": "setting metadata.finalizers is a patch of the object; clusters running the "
        "OwnerReferencesPermissionEnforcement admission plugin (OpenShift) also ask for "
        "update on the finalizers subresource",
        "scope": "namespace",
        "rule": {
            "apiGroups": ["flashsale.io"],
            "resources": ["flashsales/finalizers"],
            "verbs": ["update", "patch"],
        },
    },
    {
        "calls": ["POST /api/v1/namespaces/NS/events"],
        "why": "one Event per phase change (Scheduled, Warming, Open, SoldOut, Closed), when a "
        "spec is applied or refused, and kopf's own warnings",
        "scope": "namespace",
        "rule": {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    },
    {
        "calls": [
            "GET /apis/autoscaling/v2/namespaces/NS/horizontalpodautoscalers/NAME",
            "PATCH /apis/autoscaling/v2/namespaces/NS/horizontalpodautoscalers/NAME",
            "LIST /apis/autoscaling/v2/namespaces/NS/horizontalpodautoscalers",
        ],
        "why": "raise and restore spec.minReplicas (original kept in the "
        "flashsale.io/original-min-replicas annotation); the list finds an HPA scaling "
        "a Deployment target, which is then refused",
        "scope": "namespace",
        "rule": {
            "apiGroups": ["autoscaling"],
            "resources": ["horizontalpodautoscalers"],
            "verbs": ["get", "list", "patch"],
        },
    },
    {
        "calls": [
            "GET /apis/apps/v1/namespaces/NS/deployments/NAME",
            "PATCH /apis/apps/v1/namespaces/NS/deployments/NAME",
        ],
        "why": "a Deployment target without an HPA: spec.replicas and the "
        "flashsale.io/original-replicas annotation in one merge patch (atomic, so the "
        "scale subresource is not used)",
        "scope": "namespace",
        "rule": {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]},
    },
    {
        "calls": ["LIST + WATCH /api/v1/namespaces"],
        "why": "kopf: namespaces coming and going when it serves every namespace (or patterns)",
        "scope": "cluster",
        "rule": {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    },
    {
        "calls": ["LIST + WATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions"],
        "why": "kopf: the FlashSale CRD being installed, upgraded or removed at run time",
        "scope": "cluster",
        "rule": {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
    },
]

# Only with FLASHSALE_OPERATOR_PEERING set (kopf's peering CRDs must be installed).
PEERING_CALLS: list[dict[str, Any]] = [
    {
        "calls": [
            "GET (the start-up check) + LIST + WATCH + PATCH "
            "/apis/kopf.dev/v1/namespaces/NS/kopfpeerings/NAME"
        ],
        "why": "kopf peering when the operator serves chosen namespaces",
        "scope": "namespace",
        "rule": {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    },
    {
        "calls": [
            "GET (the start-up check) + LIST + WATCH + PATCH "
            "/apis/kopf.dev/v1/clusterkopfpeerings/NAME"
        ],
        "why": "kopf peering when the operator serves every namespace",
        "scope": "cluster",
        "rule": {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    },
]


def rules(*, scope: str | None = None, peering: bool = False) -> list[dict[str, Any]]:
    """PolicyRules (apiGroups, resources, verbs), optionally only those of one scope."""
    calls = CALLS + (PEERING_CALLS if peering else [])
    return [
        {k: list(v) for k, v in entry["rule"].items()}
        for entry in calls
        if scope is None or entry["scope"] == scope
    ]


def allows(rule_set: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Whether `rule_set` lets `verb` on `group`/`resource` (resource may be `x/sub`)."""
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in rule_set
    )
