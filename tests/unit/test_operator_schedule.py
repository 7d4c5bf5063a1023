"""The operator's decisions are pure functions of the clock, the spec and what the cluster
holds: phases and lead times across time zones and daylight-saving changes, overlapping sales
on one target, and an operator restarted mid-window deciding exactly as the old one would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flashsale.operator import schedule
from flashsale.operator.scaling import ANNOTATIONS, DEPLOYMENT, HPA, SCALED_FOR, plan_patch
from flashsale.operator.schedule import Phase, Window, decide, plan, resolve_time, wanted_replicas
from flashsale.waiting_room.sale import ValidationError

ORIGINAL, APPLIED = ANNOTATIONS[HPA]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def spec(opens: str, closes: str, tz: str = "UTC", **extra: Any) -> dict[str, Any]:
    return {"schedule": {"opensAt": opens, "closesAt": closes, "timeZone": tz}, **extra}


# -- time zones ------------------------------------------------------------------------------


def test_a_time_without_offset_is_wall_clock_time_in_the_sales_zone() -> None:
    assert resolve_time("2026-12-01T12:00:00", "Asia/Seoul", "f") == utc(2026, 12, 1, 3)
    assert resolve_time("2026-12-01T12:00:00", "America/New_York", "f") == utc(2026, 12, 1, 17)
    assert resolve_time("2026-07-01T12:00:00", "America/New_York", "f") == utc(2026, 7, 1, 16)
    assert resolve_time("2026-12-01T12:00:00", "UTC", "f") == utc(2026, 12, 1, 12)


def test_an_explicit_offset_wins_over_the_zone() -> None:
    assert resolve_time("2026-12-01T12:00:00+09:00", "America/New_York", "f") == utc(2026, 12, 1, 3)
    assert resolve_time("2026-12-01T03:00:00Z", "Asia/Seoul", "f") == utc(2026, 12, 1, 3)


def test_seoul_and_new_york_sales_open_at_their_own_noon() -> None:
    seoul = plan(spec("2026-12-01T12:00:00", "2026-12-01T13:00:00", "Asia/Seoul"))
    new_york = plan(spec("2026-12-01T12:00:00", "2026-12-01T13:00:00", "America/New_York"))
    assert new_york.opens_at - seoul.opens_at == timedelta(hours=14)
    # the same instant is Open in Seoul and Scheduled in New York
    now = utc(2026, 12, 1, 3, 30)
    assert decide(seoul, now).phase is Phase.OPEN
    assert decide(new_york, now).phase is Phase.SCHEDULED


def test_bad_time_zones_and_times_say_what_to_write() -> None:
    with pytest.raises(ValidationError) as info:
        plan(spec("2026-12-01T12:00:00", "2026-12-01T13:00:00", "Asia/Tokio"))
    assert info.value.field == "spec.schedule.timeZone"
    assert "'Asia/Tokio' is not an IANA time zone name" in info.value.message
    with pytest.raises(ValidationError) as info:
        plan(spec("1 December, noon", "2026-12-01T13:00:00"))
    assert info.value.field == "spec.schedule.opensAt"
    assert "e.g. 2026-12-01T12:00:00" in info.value.message
    with pytest.raises(ValidationError) as info:
        plan(spec("2026-12-01T12:00:00+09:00", "2026-12-01T11:00:00+09:00"))
    assert info.value.field == "spec.schedule.closesAt"
    assert info.value.message.startswith("must be after spec.schedule.opensAt")


# -- daylight saving time --------------------------------------------------------------------


def test_spring_forward_a_wall_clock_time_that_does_not_exist_is_refused() -> None:
    # 2027-03-14 in New York: 02:00 EST jumps to 03:00 EDT
    with pytest.raises(ValidationError) as info:
        resolve_time("2027-03-14T02:30:00", "America/New_York", "spec.schedule.opensAt")
    assert info.value.field == "spec.schedule.opensAt"
    assert info.value.message == (
        "2027-03-14T02:30:00 does not exist in America/New_York: the clocks skip it (daylight "
        "saving time starts); pick a time outside the gap or add an offset"
    )


def test_spring_forward_a_sale_across_the_change_is_an_hour_shorter_on_the_wall() -> None:
    across = plan(
        spec(
            "2027-03-14T01:30:00",
            "2027-03-14T03:30:00",
            "America/New_York",
            prewarm={"leadSeconds": 600},
            scaling={
                "target": {"name": "web"},
                "replicas": 10,
                "leadSeconds": 3600,
                "cooldownSeconds": 900,
            },
        )
    )
    assert across.opens_at == utc(2027, 3, 14, 6, 30)  # 01:30 EST
    assert across.closes_at == utc(2027, 3, 14, 7, 30)  # 03:30 EDT
    assert across.closes_at - across.opens_at == timedelta(hours=1)
    # leads are real seconds, not wall-clock arithmetic
    assert across.prewarm_at == utc(2027, 3, 14, 6, 20)
    assert across.scaling is not None
    assert across.scaling.start == utc(2027, 3, 14, 5, 30)
    assert across.scaling.end == utc(2027, 3, 14, 7, 45)


def test_spring_forward_leads_reach_back_across_the_gap() -> None:
    # opening at 03:05 EDT; a 10 minute lead starts at 01:55 EST, not at "02:55"
    after = plan(
        spec(
            "2027-03-14T03:05:00",
            "2027-03-14T05:00:00",
            "America/New_York",
            scaling={"target": {"name": "web"}, "replicas": 4, "leadSeconds": 600},
        )
    )
    assert after.opens_at == utc(2027, 3, 14, 7, 5)
    assert after.scaling is not None and after.scaling.start == utc(2027, 3, 14, 6, 55)
    assert not decide(after, utc(2027, 3, 14, 6, 54, 59)).scale
    assert decide(after, utc(2027, 3, 14, 6, 55)).scale
    assert decide(after, utc(2027, 3, 14, 6, 55)).phase is Phase.SCHEDULED


def test_fall_back_a_wall_clock_time_shown_twice_asks_for_the_offset() -> None:
    # 2027-11-07 in New York: 02:00 EDT goes back to 01:00 EST, 01:30 happens twice
    with pytest.raises(ValidationError) as info:
        resolve_time("2027-11-07T01:30:00", "America/New_York", "spec.schedule.opensAt")
    assert info.value.message == (
        "2027-11-07T01:30:00 happens twice in America/New_York (the clocks go back); add the "
        "offset you mean: 2027-11-07T01:30:00-04:00 for the first, 2027-11-07T01:30:00-05:00 "
        "for the second"
    )
    first = resolve_time("2027-11-07T01:30:00-04:00", "America/New_York", "f")
    second = resolve_time("2027-11-07T01:30:00-05:00", "America/New_York", "f")
    assert second - first == timedelta(hours=1)


def test_fall_back_a_sale_across_the_change_is_an_hour_longer_on_the_wall() -> None:
    across = plan(spec("2027-11-07T00:30:00", "2027-11-07T02:30:00", "America/New_York"))
    assert across.closes_at - across.opens_at == timedelta(hours=3)


# -- phases ----------------------------------------------------------------------------------


def test_phases_follow_the_clock() -> None:
    p = plan(
        spec(
            "2026-12-01T12:00:00Z",
            "2026-12-01T13:00:00Z",
            prewarm={"leadSeconds": 300},
            scaling={
                "target": {"name": "web"},
                "replicas": 6,
                "leadSeconds": 600,
                "cooldownSeconds": 900,
            },
        )
    )
    t = utc(2026, 12, 1, 12)
    expected = [
        (t - timedelta(minutes=11), Phase.SCHEDULED, False, False, "ScaleUp"),
        (t - timedelta(minutes=10), Phase.SCHEDULED, False, True, "Warming"),
        (t - timedelta(minutes=5), Phase.WARMING, True, True, "Open"),
        (t, Phase.OPEN, True, True, "Closed"),
        (t + timedelta(minutes=59), Phase.OPEN, True, True, "Closed"),
        (t + timedelta(hours=1), Phase.CLOSED, False, True, "ScaleDown"),
        (t + timedelta(hours=1, minutes=15), Phase.CLOSED, False, False, None),
    ]
    for now, phase, prewarm, scale, next_event in expected:
        decision = decide(p, now)
        assert (decision.phase, decision.prewarm, decision.scale, decision.next_event) == (
            phase,
            prewarm,
            scale,
            next_event,
        ), now


def test_sold_out_and_closed_early() -> None:
    p = plan(spec("2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"))
    during = utc(2026, 12, 1, 12, 30)
    assert decide(p, during, sold_out=True).phase is Phase.SOLD_OUT
    assert decide(p, utc(2026, 12, 1, 11, 58), sold_out=True).phase is Phase.WARMING
    closed = decide(p, during, closed_at=utc(2026, 12, 1, 12, 20))
    assert closed.phase is Phase.CLOSED and not closed.prewarm


def test_a_short_notice_sale_prewarms_at_once() -> None:
    p = plan(spec("2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"))  # default lead: 300 s
    decision = decide(p, utc(2026, 12, 1, 11, 59))
    assert decision.phase is Phase.WARMING and decision.prewarm


def test_the_sales_own_times_win_over_a_refused_change() -> None:
    refused = plan(
        spec(
            "2026-12-01T15:00:00Z",
            "2026-12-01T16:00:00Z",
            scaling={
                "target": {"name": "web"},
                "replicas": 3,
                "leadSeconds": 60,
                "cooldownSeconds": 60,
            },
        )
    )
    running = refused.with_times(utc(2026, 12, 1, 12), utc(2026, 12, 1, 13))
    assert decide(running, utc(2026, 12, 1, 12, 30)).phase is Phase.OPEN
    assert running.scaling is not None
    assert (running.scaling.start, running.scaling.end) == (
        utc(2026, 12, 1, 11, 59),
        utc(2026, 12, 1, 13, 1),
    )


# -- overlapping sales on one target ---------------------------------------------------------


def test_overlapping_sales_the_largest_wish_wins() -> None:
    t = utc(2026, 12, 1, 12)
    windows = [
        Window("morning", 4, t - timedelta(hours=1), t + timedelta(hours=1)),
        Window("noon", 10, t, t + timedelta(hours=2)),
        Window("evening", 6, t + timedelta(hours=1), t + timedelta(hours=3)),
    ]
    assert wanted_replicas(windows, t - timedelta(minutes=1)) == (4, ["morning"])
    assert wanted_replicas(windows, t) == (10, ["morning", "noon"])
    assert wanted_replicas(windows, t + timedelta(hours=1)) == (10, ["evening", "noon"])
    assert wanted_replicas(windows, t + timedelta(hours=2)) == (6, ["evening"])
    assert wanted_replicas(windows, t + timedelta(hours=3)) == (None, [])
    assert wanted_replicas([], t) == (None, [])
    # the order the sales are seen in does not matter
    assert wanted_replicas(reversed(windows), t) == wanted_replicas(windows, t)


def hpa(
    min_replicas: int, annotations: dict[str, str] | None = None, max_replicas: int = 50
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "annotations": annotations or {}},
        "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
    }


def applied(obj: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON merge patch applied (None removes)."""

    def merge(base: Any, change: Any) -> Any:
        if not isinstance(change, dict):
            return change
        out = dict(base) if isinstance(base, dict) else {}
        for key, value in change.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value)
        return out

    return merge(obj, patch or {})


def test_raising_and_restoring_an_hpa_remembers_the_original() -> None:
    up = plan_patch(HPA, hpa(2), 10, ["spring"])
    assert up.patch == {
        "metadata": {"annotations": {ORIGINAL: "2", APPLIED: "10", SCALED_FOR: "spring"}},
        "spec": {"minReplicas": 10},
    }
    raised = applied(hpa(2), up.patch)
    assert plan_patch(HPA, raised, 10, ["spring"]).patch is None  # idempotent: nothing to do
    down = plan_patch(HPA, raised, None)
    assert applied(raised, down.patch) == hpa(2)


def test_an_hpa_is_never_lowered_below_its_own_minimum() -> None:
    outcome = plan_patch(HPA, hpa(12), 5, ["small"])
    assert outcome.replicas == 12 and not outcome.raised
    assert outcome.patch == {
        "metadata": {"annotations": {ORIGINAL: "12", APPLIED: "12", SCALED_FOR: "small"}}
    }


def test_max_replicas_is_respected_and_said() -> None:
    outcome = plan_patch(HPA, hpa(2, max_replicas=8), 20, ["big"])
    assert outcome.replicas == 8 and outcome.raised
    assert "20 were asked but the HPA's maxReplicas is 8" in outcome.message


def test_a_helm_upgrade_during_the_window_becomes_the_new_original() -> None:
    raised = applied(hpa(2), plan_patch(HPA, hpa(2), 10, ["spring"]).patch)
    reset = applied(raised, {"spec": {"minReplicas": 3}})  # the chart now says 3
    again = plan_patch(HPA, reset, 10, ["spring"])
    assert again.patch == {
        "metadata": {"annotations": {ORIGINAL: "3"}},
        "spec": {"minReplicas": 10},
    }
    after = applied(reset, again.patch)
    assert applied(after, plan_patch(HPA, after, None).patch)["spec"]["minReplicas"] == 3


def test_a_larger_overlapping_wish_moves_up_without_forgetting_the_original() -> None:
    first = applied(hpa(2), plan_patch(HPA, hpa(2), 5, ["a"]).patch)
    both = applied(first, plan_patch(HPA, first, 9, ["a", "b"]).patch)
    assert both["spec"]["minReplicas"] == 9
    assert both["metadata"]["annotations"][ORIGINAL] == "2"  # not 5: 5 was ours
    back = applied(both, plan_patch(HPA, both, 5, ["a"]).patch)
    assert back["spec"]["minReplicas"] == 5
    assert applied(back, plan_patch(HPA, back, None).patch) == hpa(2)


def test_a_restart_mid_window_decides_the_same_and_loses_nothing() -> None:
    """Two operators, the second started from nothing but the cluster's state, take the same
    decisions at the same instants: the phase, the leads, and the restore from the annotation."""
    manifest = spec(
        "2027-03-14T03:05:00",
        "2027-03-14T05:00:00",
        "America/New_York",
        prewarm={"leadSeconds": 300},
        scaling={
            "target": {"name": "web"},
            "replicas": 8,
            "leadSeconds": 1800,
            "cooldownSeconds": 600,
        },
    )
    instants = [utc(2027, 3, 14, 6, 30) + timedelta(minutes=m) for m in range(0, 200, 7)]
    before = [decide(plan(manifest), now) for now in instants]
    after = [decide(plan(dict(manifest)), now) for now in instants]  # a new process
    assert before == after
    # the first operator raised the HPA, then died; the second knows only the HPA itself
    p = plan(manifest)
    window = schedule.window(p, "spring")
    assert window is not None
    mid = utc(2027, 3, 14, 8)
    wanted, who = wanted_replicas([window], mid)
    cluster = applied(hpa(2), plan_patch(HPA, hpa(2), wanted, who).patch)
    assert plan_patch(HPA, cluster, *wanted_replicas([window], mid)).patch is None
    end = p.closes_at + timedelta(seconds=600)
    assert wanted_replicas([window], end) == (None, [])
    assert applied(cluster, plan_patch(HPA, cluster, None).patch) == hpa(2)


def test_a_deployment_target_uses_replicas_and_its_own_annotations() -> None:
    deployment = {"metadata": {"annotations": {}}, "spec": {"replicas": 3}}
    original, applied_key = ANNOTATIONS[DEPLOYMENT]
    up = plan_patch(DEPLOYMENT, deployment, 7, ["flight"])
    assert up.patch == {
        "metadata": {"annotations": {original: "3", applied_key: "7", SCALED_FOR: "flight"}},
        "spec": {"replicas": 7},
    }
    raised = applied(deployment, up.patch)
    assert applied(raised, plan_patch(DEPLOYMENT, raised, None).patch) == deployment
    assert plan_patch(DEPLOYMENT, deployment, None).patch is None  # never touched: leave it


def test_an_omitted_scaling_target_falls_back_to_the_default() -> None:
    spec = {
        "schedule": {"opensAt": "2026-12-01T12:00:00Z", "closesAt": "2026-12-01T13:00:00Z"},
        "scaling": {"replicas": 8},
    }
    plan = schedule.plan(spec, ("HorizontalPodAutoscaler", "flashsale-api"))
    assert plan.scaling is not None
    assert (plan.scaling.kind, plan.scaling.name, plan.scaling.replicas) == (
        "HorizontalPodAutoscaler",
        "flashsale-api",
        8,
    )
    with pytest.raises(ValidationError) as error:
        schedule.plan(spec)
    assert error.value.field == "spec.scaling.target.name"
    named = {**spec, "scaling": {"replicas": 8, "target": {"kind": "Deployment", "name": "web"}}}
    assert schedule.plan(named, ("HorizontalPodAutoscaler", "flashsale-api")).scaling.name == "web"
