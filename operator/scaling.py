"""Extra replicas for a sale: raise an HPA's minReplicas (or a Deployment's replicas) for the
window, remember the original in an annotation on the object itself, put it back afterwards.

As KEDA's cron scaler and cronhpa do, an HPA is scaled through its minReplicas, never by
patching the Deployment under it (the HPA would undo that at once). A Deployment is scaled
directly only when no HPA scales it; one that has an HPA is refused with a message naming it.

Everything needed to restore is on the scaled object (`flashsale.io/original-*` and
`flashsale.io/applied-*` annotations), so an operator restarted mid-window, or a different
replica of it, restores exactly what was there. The state is re-asserted on every tick: when a
`helm upgrade` (or a person) resets the value during the window, the value they set becomes the
new original and the wish is applied on top of it again.

`plan_patch` is pure; `Scaler` does the two or three API calls around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flashsale.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)

HPA = "HorizontalPodAutoscaler"
DEPLOYMENT = "Deployment"
SCALED_FOR = "flashsale.io/scaled-for"
ANNOTATIONS = {
    HPA: ("flashsale.io/original-min-replicas", "flashsale.io/applied-min-replicas"),
    DEPLOYMENT: ("flashsale.io/original-replicas", "flashsale.io/applied-replicas"),
}
FIELDS = {HPA: "minReplicas", DEPLOYMENT: "replicas"}


class ScalingError(Exception):
    """The target cannot be scaled as asked; the message says what to change."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Target:
    namespace: str
    kind: str
    name: str

    @property
    def path(self) -> str:
        if self.kind == HPA:
            return (
                f"/apis/autoscaling/v2/namespaces/{self.namespace}"
                f"/horizontalpodautoscalers/{self.name}"
            )
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Outcome:
    patch: dict[str, Any] | None  # the merge patch to send, None when all is as it should be
    replicas: int  # minReplicas (HPA) or replicas (Deployment) once patched
    original: int  # the value to restore after the window
    raised: bool  # held above the original for a sale
    message: str


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def plan_patch(
    kind: str, obj: dict[str, Any], wanted: int | None, wishers: list[str] | None = None
) -> Outcome:
    """What to change on `obj` (an HPA or a Deployment) so that it holds `wanted` replicas at
    least (None: nobody wants any, restore the original)."""
    original_key, applied_key = ANNOTATIONS[kind]
    field = FIELDS[kind]
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    spec = obj.get("spec") or {}
    current = _int(spec.get(field))
    current = 1 if current is None else current
    original = _int(annotations.get(original_key))
    applied = _int(annotations.get(applied_key))
    ours = original is not None
    if ours and applied is not None and applied != current:
        # someone set the value since we did (a helm upgrade, a person): theirs is the baseline
        original = current
    if original is None:
        original = current

    if wanted is None:
        if not ours:
            return Outcome(None, current, current, False, f"{field} is {current}, not raised")
        patch: dict[str, Any] = {
            "metadata": {"annotations": {original_key: None, applied_key: None, SCALED_FOR: None}}
        }
        if current != original:
            patch["spec"] = {field: original}
        return Outcome(patch, original, original, False, f"{field} restored to {original}")

    target = max(wanted, original)
    message = f"{field} {target} for {', '.join(wishers or [])} (original {original})"
    maximum = _int(spec.get("maxReplicas")) if kind == HPA else None
    if maximum is not None and target > maximum:
        target = max(maximum, original)
        message = (
            f"{field} {target}: {wanted} were asked but the HPA's maxReplicas is "
            f"{maximum} (original {original})"
        )
    desired = {
        original_key: str(original),
        applied_key: str(target),
        SCALED_FOR: ",".join(wishers or []),
    }
    changes = {k: v for k, v in desired.items() if annotations.get(k) != v}
    patch = {}
    if changes:
        patch["metadata"] = {"annotations": changes}
    if current != target:
        patch["spec"] = {field: target}
    return Outcome(patch or None, target, original, target > original, message)


def hpas_scaling(deployment: str, hpas: list[dict[str, Any]]) -> list[str]:
    """Names of the HPAs whose scaleTargetRef is this Deployment."""
    names = []
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == DEPLOYMENT and ref.get("name") == deployment:
            names.append((hpa.get("metadata") or {}).get("name", "?"))
    return sorted(names)


class Scaler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def reconcile(
        self, target: Target, wanted: int | None, wishers: list[str] | None = None
    ) -> Outcome:
        """Bring the target to what the sales want now (None: restore); idempotent."""
        obj = await self.kube.get(target.path)
        if obj is None:
            if wanted is None:
                return Outcome(None, 0, 0, False, f"{target} does not exist; nothing to restore")
            raise ScalingError(
                "TargetNotFound", f"{target} does not exist; create it or fix spec.scaling.target"
            )
        outcome = plan_patch(target.kind, obj, wanted, wishers)
        if target.kind == DEPLOYMENT:
            hpas = await self.kube.list(
                f"/apis/autoscaling/v2/namespaces/{target.namespace}/horizontalpodautoscalers"
            )
            managers = hpas_scaling(target.name, hpas)
            if managers:
                ours = ANNOTATIONS[DEPLOYMENT][0] in (
                    (obj.get("metadata") or {}).get("annotations") or {}
                )
                if ours:  # forget our memory; the replicas belong to the HPA now
                    await self.kube.patch(
                        target.path,
                        {
                            "metadata": {
                                "annotations": {
                                    k: None for k in (*ANNOTATIONS[DEPLOYMENT], SCALED_FOR)
                                }
                            }
                        },
                    )
                if wanted is None:
                    return Outcome(None, 0, 0, False, f"{target} is scaled by an HPA")
                raise ScalingError(
                    "ScaledByHPA",
                    f"{target} is scaled by HorizontalPodAutoscaler {', '.join(managers)}; set "
                    f"spec.scaling.target to kind HorizontalPodAutoscaler, name {managers[0]}",
                )
        if outcome.patch is not None:
            try:
                await self.kube.patch(target.path, outcome.patch)
            except KubeError as error:
                raise ScalingError("PatchFailed", f"{target}: {error}") from error
            log.info(
                "scaled",
                extra={"target": str(target), "replicas": outcome.replicas, "for": wishers or []},
            )
        return outcome
