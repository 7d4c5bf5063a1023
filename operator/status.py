"""The FlashSale's status, built by pure functions: conditions, figures and what changed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

CONDITION_ORDER = ("Accepted", "Warm", "Scaled")


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    kind: str, ok: bool, reason: str, message: str, *, now: datetime, generation: int | None = None
) -> dict[str, Any]:
    """A Kubernetes-style condition (metav1.Condition)."""
    out: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": iso(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(
    current: Sequence[Mapping[str, Any]] | None,
    *updates: Mapping[str, Any] | None,
    drop: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`current` with `updates` applied: a condition keeps its lastTransitionTime while its
    status stays the same. Conditions of a type in `drop` go away."""
    by_type: dict[str, dict[str, Any]] = {
        c["type"]: dict(c) for c in current or [] if isinstance(c, Mapping) and "type" in c
    }
    for update in updates:
        if update is None:
            continue
        old = by_type.get(update["type"])
        new = dict(update)
        if old is not None and old.get("status") == new["status"]:
            new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        by_type[new["type"]] = new
    for kind in drop:
        by_type.pop(kind, None)
    order = {kind: i for i, kind in enumerate(CONDITION_ORDER)}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], 99), c["type"]))


def get_condition(
    conditions: Sequence[Mapping[str, Any]] | None, kind: str
) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def changes(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose value differs (what a merge patch needs to carry)."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}
