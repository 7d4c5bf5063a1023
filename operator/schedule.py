"""When things happen to a FlashSale: pure functions of the clock and the spec.

Nothing here keeps state or does I/O. Every decision the operator takes on a tick (the phase,
whether to pre-warm, whether to hold extra replicas, what happens next) is a function of `now`,
the spec and what the cluster says (the sale's sold-out flag), so an operator restarted in the
middle of a sale takes exactly the decisions the old one would have taken.

Times in a spec may carry an offset (`2026-12-01T12:00:00+09:00`) or not: a time without one is
wall-clock time in `spec.schedule.timeZone`. A wall-clock time the clocks skip (spring forward)
or show twice (fall back) is refused with a message saying which offset to add, because an hour
off is the worst mistake a flash sale can make.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flashsale.waiting_room.sale import ValidationError

PREWARM_LEAD_SECONDS = 300
SCALING_LEAD_SECONDS = 600
SCALING_COOLDOWN_SECONDS = 900
TARGET_KINDS = ("HorizontalPodAutoscaler", "Deployment")


class Phase(enum.StrEnum):
    SCHEDULED = "Scheduled"  # nothing to do yet
    WARMING = "Warming"  # stock loaded into Redis; the pre-queue fills
    OPEN = "Open"  # shoppers are admitted
    SOLD_OUT = "SoldOut"  # open, nothing left to sell (unpaid holds may still come back)
    CLOSED = "Closed"  # past closesAt, or closed early by an admin
    INVALID = "Invalid"  # the spec was never accepted: see the Accepted condition


@dataclass(frozen=True)
class Scaling:
    kind: str  # HorizontalPodAutoscaler | Deployment
    name: str
    replicas: int
    start: datetime  # opens_at - leadSeconds
    end: datetime  # closes_at + cooldownSeconds


@dataclass(frozen=True)
class Plan:
    """A spec turned into absolute instants (UTC)."""

    opens_at: datetime
    closes_at: datetime
    prewarm_lead: timedelta
    scaling: Scaling | None = None
    scaling_lead: timedelta = timedelta(seconds=SCALING_LEAD_SECONDS)
    scaling_cooldown: timedelta = timedelta(seconds=SCALING_COOLDOWN_SECONDS)

    @property
    def prewarm_at(self) -> datetime:
        return self.opens_at - self.prewarm_lead

    def with_times(self, opens_at: datetime, closes_at: datetime) -> Plan:
        """The same plan around other opening and closing times (the sale's own, when a
        change of the spec was refused and the sale runs on the times it had)."""
        scaling = self.scaling
        if scaling is not None:
            scaling = replace(
                scaling, start=opens_at - self.scaling_lead, end=closes_at + self.scaling_cooldown
            )
        return replace(
            self,
            opens_at=opens_at.astimezone(UTC),
            closes_at=closes_at.astimezone(UTC),
            scaling=scaling,
        )


@dataclass(frozen=True)
class Decision:
    phase: Phase
    prewarm: bool  # the stock should be in Redis by now
    scale: bool  # this sale wants its extra replicas now
    next_event: str | None  # what happens next: Warming, Open, Closed, ScaleUp, ScaleDown
    next_at: datetime | None


@dataclass(frozen=True)
class Window:
    """One FlashSale's wish for replicas on a target, over a period."""

    sale: str
    replicas: int
    start: datetime
    end: datetime

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.end


# -- time ------------------------------------------------------------------------------------


def zone(name: Any, field: str = "spec.schedule.timeZone") -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(field, "must be an IANA time zone name, e.g. Asia/Seoul")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            field,
            f"{name!r} is not an IANA time zone name (e.g. Asia/Seoul, America/New_York, UTC)",
        ) from None


def _offset(dt: datetime) -> str:
    minutes = int(dt.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def resolve_time(value: Any, time_zone: str, field: str) -> datetime:
    """An instant (UTC) from an ISO 8601 date-time; one without an offset is wall-clock time in
    `time_zone`. Wall-clock times that do not exist or happen twice are refused."""
    if isinstance(value, datetime):  # YAML loaders turn unquoted timestamps into datetimes
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                field,
                f"{value!r} is not an ISO 8601 date-time; write e.g. 2026-12-01T12:00:00 "
                "(in spec.schedule.timeZone) or 2026-12-01T12:00:00+09:00",
            ) from None
    else:
        raise ValidationError(field, "must be a date-time string, e.g. 2026-12-01T12:00:00")
    if parsed.tzinfo is not None and parsed.utcoffset() is not None:
        return parsed.astimezone(UTC)
    tz = zone(time_zone)
    first = parsed.replace(tzinfo=tz, fold=0)
    second = parsed.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        shown = parsed.isoformat()
        if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != parsed:
            raise ValidationError(
                field,
                f"{shown} does not exist in {time_zone}: the clocks skip it (daylight "
                "saving time starts); pick a time outside the gap or add an offset",
            )
        raise ValidationError(
            field,
            f"{shown} happens twice in {time_zone} (the clocks go back); add the offset "
            f"you mean: {shown}{_offset(first)} for the first, {shown}{_offset(second)} "
            "for the second",
        )
    return first.astimezone(UTC)


def _seconds(
    value: Any, field: str, default: int, low: int = 0, high: int = 7 * 86_400
) -> timedelta:
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, "must be a whole number of seconds")
    if not low <= value <= high:
        raise ValidationError(field, f"must be between {low} and {high} seconds")
    return timedelta(seconds=value)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be an object")
    return value


# -- the plan --------------------------------------------------------------------------------


def plan(spec: Mapping[str, Any], default_target: tuple[str, str] | None = None) -> Plan:
    """Absolute instants from a FlashSale spec; raises ValidationError naming the field.

    `default_target` (kind, name) stands in for an omitted spec.scaling.target: the chart
    passes its own API HPA, so a FlashSale need not name it."""
    schedule = _object(spec.get("schedule"), "spec.schedule")
    time_zone = schedule.get("timeZone") or "UTC"
    zone(time_zone)
    for name in ("opensAt", "closesAt"):
        if schedule.get(name) in (None, ""):
            raise ValidationError(f"spec.schedule.{name}", "is required")
    opens_at = resolve_time(schedule["opensAt"], time_zone, "spec.schedule.opensAt")
    closes_at = resolve_time(schedule["closesAt"], time_zone, "spec.schedule.closesAt")
    if closes_at <= opens_at:
        raise ValidationError(
            "spec.schedule.closesAt",
            f"must be after spec.schedule.opensAt ({closes_at.isoformat()} is not after "
            f"{opens_at.isoformat()})",
        )
    prewarm = _object(spec.get("prewarm"), "spec.prewarm")
    prewarm_lead = _seconds(
        prewarm.get("leadSeconds"), "spec.prewarm.leadSeconds", PREWARM_LEAD_SECONDS
    )
    result = Plan(opens_at=opens_at, closes_at=closes_at, prewarm_lead=prewarm_lead)
    scaling = spec.get("scaling")
    if scaling is None:
        return result
    scaling = _object(scaling, "spec.scaling")
    target = _object(scaling.get("target"), "spec.scaling.target")
    if not target.get("name") and default_target is not None:
        target = {"kind": default_target[0], "name": default_target[1]}
    kind = target.get("kind") or "HorizontalPodAutoscaler"
    if kind not in TARGET_KINDS:
        raise ValidationError(
            "spec.scaling.target.kind", f"must be one of {', '.join(TARGET_KINDS)}"
        )
    target_name = target.get("name")
    if not isinstance(target_name, str) or not target_name:
        raise ValidationError(
            "spec.scaling.target.name",
            "is required: the HorizontalPodAutoscaler or Deployment to scale "
            "(or set FLASHSALE_OPERATOR_DEFAULT_TARGET)",
        )
    replicas = scaling.get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 10_000:
        raise ValidationError("spec.scaling.replicas", "must be a whole number from 1 to 10000")
    lead = _seconds(scaling.get("leadSeconds"), "spec.scaling.leadSeconds", SCALING_LEAD_SECONDS)
    cooldown = _seconds(
        scaling.get("cooldownSeconds"), "spec.scaling.cooldownSeconds", SCALING_COOLDOWN_SECONDS
    )
    return replace(
        result,
        scaling=Scaling(
            kind=kind,
            name=target_name,
            replicas=replicas,
            start=opens_at - lead,
            end=closes_at + cooldown,
        ),
        scaling_lead=lead,
        scaling_cooldown=cooldown,
    )


# -- decisions -------------------------------------------------------------------------------


def decide(
    plan: Plan, now: datetime, *, sold_out: bool = False, closed_at: datetime | None = None
) -> Decision:
    """The phase and what to do at `now`. `sold_out` is the room's flag; `closed_at` is set when
    an admin closed the sale early."""
    ends = plan.closes_at if closed_at is None else min(plan.closes_at, closed_at)
    if now >= ends:
        phase = Phase.CLOSED
    elif now >= plan.opens_at:
        phase = Phase.SOLD_OUT if sold_out else Phase.OPEN
    elif now >= plan.prewarm_at:
        phase = Phase.WARMING
    else:
        phase = Phase.SCHEDULED
    scale = plan.scaling is not None and plan.scaling.start <= now < plan.scaling.end
    events = [("Warming", plan.prewarm_at), ("Open", plan.opens_at), ("Closed", ends)]
    if plan.scaling is not None:
        events += [("ScaleUp", plan.scaling.start), ("ScaleDown", plan.scaling.end)]
    upcoming = sorted((at, event) for event, at in events if at > now)
    next_at, next_event = upcoming[0] if upcoming else (None, None)
    return Decision(
        phase=phase,
        prewarm=plan.prewarm_at <= now < ends,
        scale=scale,
        next_event=next_event,
        next_at=next_at,
    )


def window(plan: Plan, sale: str) -> Window | None:
    if plan.scaling is None:
        return None
    return Window(
        sale=sale, replicas=plan.scaling.replicas, start=plan.scaling.start, end=plan.scaling.end
    )


def wanted_replicas(windows: Iterable[Window], now: datetime) -> tuple[int | None, list[str]]:
    """What every FlashSale scaling one target wants at `now`: the largest wish wins. Returns
    (replicas or None when nobody wants anything, the sales wanting it, sorted)."""
    active = [w for w in windows if w.active(now)]
    if not active:
        return None, []
    return max(w.replicas for w in active), sorted({w.sale for w in active})
