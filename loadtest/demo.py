"""`make demo` (`python -m loadtest.demo`): a whole flash sale on this machine, end to end,
checked as it runs.

The demo starts the real API (two uvicorn workers), one admitter and one persister as
subprocesses, creates a sale through the admin API and sends a crowd of simulated shoppers
through the waiting room over HTTP, as browsers would: join, poll at the pace the server asks,
and once admitted hold stock, pay (a few are declined, a few walk away from their hold, a few
cancel after paying), leave. Meanwhile it samples the room straight from Redis to prove the
admission limit holds. At the end it waits for unpaid holds to expire and for the persister to
drain, then squares what every shopper saw with what Redis and PostgreSQL recorded: nothing
oversold, every confirmed purchase in PostgreSQL exactly once, reconcile clean. It prints a
readable summary and, as the very last line of stdout, one JSON object for scripts and tests.

The demo keeps to a Redis prefix and a PostgreSQL schema of its own (`demo`, `flashsale_demo`,
unless the caller chose others), so it neither sees nor disturbs another install's admitter
or persister on the same servers.

The processes, the crowd, the invariants and the report's pieces are the harness's
(`loadtest/harness/`), shared with the spike and the chaos run; this file is the demo's sale
and its summary. What a shopper does once admitted is `crowd.shop` (passed to `run` as
`after_admission`); what they saw is kept in `Crowd.checkout`, and `Crowd.extra` extends the
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import secrets
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flashsale.config import Settings, SettingsError
from flashsale.logs import setup_logging
from flashsale.waiting_room.db import migrate
from flashsale.waiting_room.room import Counters, place_of
from loadtest.harness import store
from loadtest.harness.crowd import (
    AfterAdmission,
    Batch,
    Crowd,
    Plan,
    SaleFailed,
    Shopper,
    admitted_bits,
    create_sale,
    drained,
    opened,
    plan_shoppers,
    progress,
    release,
    runner,
    settle,
    shop,
    wait_ready,
    watch_room,
)
from loadtest.harness.invariants import (
    Ledger,
    Stream,
    ended_otherwise,
    judge,
    reconcile_problems,
    stream_problems,
)
from loadtest.harness.processes import (
    FAST_ROLES,
    FLASHSALE,
    Procs,
    free_port,
    install_env,
    processes,
)
from loadtest.harness.report import fmt, percentile, rounded

DEMO_PREFIX = "demo"
DEMO_SCHEMA = "flashsale_demo"


def demo_settings(settings: Settings) -> Settings:
    """The caller's connections with fresh demo secrets. Redis keys go under `demo` and
    tables into the schema `flashsale_demo`, so the demo's admitter and persister see only the
    demo's sale and no other install's admitter or persister sees it; a prefix or schema the
    caller chose (tests, parallel demos) is kept."""
    prefix, schema = settings.redis_prefix, settings.database_schema
    if prefix == Settings.redis_prefix:  # the class attributes hold the defaults
        prefix = DEMO_PREFIX
    if schema == Settings.database_schema:
        schema = DEMO_SCHEMA
    return dataclasses.replace(
        settings,
        redis_prefix=prefix,
        database_schema=schema,
        admin_token=secrets.token_urlsafe(24),
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
    )


def role_env(settings: Settings, plan: Plan) -> dict[str, str]:
    """What the API, the admitter and the persister must agree on (keys, prefix, schema),
    what a short local sale needs, and no per-address join limit (every shopper is
    127.0.0.1)."""
    return install_env(
        {},
        settings,
        **FAST_ROLES,
        FLASHSALE_JOIN_LIMIT_PER_ADDRESS=str(plan.join_limit_per_address),
    )


@dataclass
class SaleResult:
    """What `run_sale` hands to `report`."""

    demo: Crowd
    crowd: list[Shopper]
    final: Counters
    prequeue: int
    admitted_bits: dict[int, bool]  # shopper n -> Redis's admitted bit for their place
    places: dict[int, int]  # shopper n -> their 0-based place in line
    drained: bool
    finished_at: float
    port: int
    reconcile: dict[str, Any] | None = None  # GET /admin/sales/{id}/reconcile once settled
    settled_at: float | None = None  # no open hold left, the persister drained
    facts: store.Facts | None = None  # PostgreSQL's and Redis's record of the sale


async def run_sale(
    plan: Plan,
    settings: Settings,
    shoppers: int,
    port: int,
    procs: Procs,
    after_admission: AfterAdmission,
    seed: int,
    made: list[str],
) -> SaleResult:
    """Create the sale (its id goes into `made`), release the crowd, watch the room, then
    read the final truth from Redis and PostgreSQL. The sale is closed on the way out,
    whatever happened."""
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with opened(plan, settings, port, seed) as demo:
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        stop = asyncio.Event()
        watchers: list[asyncio.Task[None]] = []
        try:
            await wait_ready(demo.http, procs, within=30)
            demo.created_at = time.time()
            stamp = datetime.fromtimestamp(demo.created_at, UTC).strftime("%Y%m%d-%H%M%S")
            sale_id = await store.off_first_shard(settings, demo.room.redis, f"demo-{stamp}")
            made.append(sale_id)
            await create_sale(demo, admin, sale_id, math.ceil(demo.created_at + plan.lead_seconds))
            crowd = plan_shoppers(plan, shoppers, demo.rng, demo.created_at, demo.opens_at)
            watchers = [
                asyncio.create_task(watch_room(demo, stop)),
                asyncio.create_task(progress(demo, crowd, stop)),
            ]
            deadline = demo.created_at + plan.hard_timeout_seconds
            await release(demo, crowd, after_admission, deadline)
            was_drained = await drained(demo, min(deadline, time.time() + plan.drain_seconds))
            finished_at = time.time()
            reconciled, settled_at = await settle(
                demo,
                admin,
                min(deadline, time.time() + plan.settle_seconds),
                lambda: procs.alive("persister"),
            )
            stop.set()
            await asyncio.gather(*watchers)
            final = await demo.room.counters(demo.sale_id)
            view = await demo.room.view(demo.sale_id, fresh=True)
            places = {s.n: place_of(view, s.index) for s in crowd if s.index is not None}
            return SaleResult(
                demo,
                crowd,
                final,
                view.prequeue,
                await admitted_bits(demo, crowd),
                places,
                was_drained,
                finished_at,
                port,
                reconciled,
                settled_at,
                await store.read_facts(settings, demo.sale_id),
            )
        finally:
            stop.set()
            for w in watchers:
                w.cancel()
            if demo.sale_id:  # closed, no admitter takes it up again
                with contextlib.suppress(Exception):
                    await demo.http.post(
                        f"/admin/sales/{demo.sale_id}/close", headers=admin, timeout=5
                    )


# -- the report -------------------------------------------------------------------------------


def report(
    result: SaleResult, plan: Plan, shoppers: int, seed: int, started: float, cpu: dict[str, float]
) -> tuple[list[str], dict[str, Any], bool]:
    """The summary lines, the JSON figures and whether every check passed."""
    demo, crowd, final, bits = result.demo, result.crowd, result.final, result.admitted_bits
    opens = demo.opens_at
    by: dict[str, list[Shopper]] = {}
    for s in crowd:
        by.setdefault(s.outcome, []).append(s)

    def count(*outcomes: str) -> int:
        return sum(len(by.get(o, [])) for o in outcomes)

    admitted = [s for s in crowd if s.admitted_at is not None]
    abandoned = by.get("abandoned", [])
    abandoned_admitted = sum(1 for s in abandoned if bits.get(s.n))
    failed = count("error", "unfinished")
    # a waiter who kept polling may still lose their place, rightly, if they came back later
    # than the absence window (an overloaded machine); not if they were told to wait that
    # long, nor if the server cannot have gone that long without seeing them
    absent_after = plan.absent_after_seconds
    skipped_polling = [s for s in by.get("expired", []) if not bits.get(s.n)]
    missed = [s for s in by.get("expired", []) if bits.get(s.n)]  # polled after it ended
    told_too_long = [s for s in skipped_polling if s.told > absent_after]
    seen_in_time = [
        s for s in skipped_polling if s not in told_too_long and s.silence <= absent_after
    ]
    late = len(skipped_polling) - len(told_too_long) - len(seen_in_time)
    missed_in_time = [s for s in missed if s.silence <= plan.admission_ttl_seconds]
    wronged = len(told_too_long) + len(seen_in_time) + len(missed_in_time)
    # the stock gone: refused at the door (no place), or told so while in line
    turned_away = [s for s in by.get("sold_out", []) if s.index is None]
    told_sold_out = [s for s in by.get("sold_out", []) if s.index is not None]
    # admitted by Redis, but the stock was gone (held by others) by the time they looked
    sold_out_admitted = sum(1 for s in told_sold_out if bits.get(s.n))
    unreached = [s for s in crowd if s.n in result.places and result.places[s.n] >= final.frontier]
    stayed = shoppers - len(abandoned) - failed - len(turned_away)
    prequeue = result.prequeue
    joined = final.joined
    max_active_seen = max((x.active for x in demo.samples), default=0)
    within_limit = max_active_seen <= plan.max_active
    pre_waits = [
        s.admitted_at - opens
        for s in admitted
        if s.index is not None and s.index < prequeue and s.admitted_at is not None
    ]
    post_waits = [
        s.admitted_at - s.joined_at
        for s in admitted
        if s.index is not None
        and s.index >= prequeue
        and s.admitted_at is not None
        and s.joined_at is not None
    ]
    noticed = [
        s.noticed_at - s.admitted_at
        for s in admitted
        if s.noticed_at is not None and s.admitted_at is not None
    ]
    batches = sorted(demo.batches.values(), key=lambda b: b.t)
    admitting = [b for b in batches if b.admitted]
    full_at = next((x.t for x in demo.samples if x.active >= plan.max_active), None)
    opened_at = next((x.t for x in demo.samples if x.opened), None)
    queued = {kind: percentile(demo.queued.get(kind, []), 0.95) for kind in ("join", "status")}
    last_join = max(demo.joins, default=None)
    duration = time.time() - started
    bits_set = sum(bits.values())
    redis_agrees = (
        bits_set == final.admitted_total
        and len(bits) - bits_set == final.skipped_total + len(unreached)
        and all(bits.get(s.n) for s in admitted)
        and not any(bits.get(s.n) for s in unreached)
    )
    # places the frontier never reached are resolved too when the stock ran out: admission
    # stopped and their owners were told (or had left the line)
    resolved = (
        result.drained
        and joined == len(bits)
        and final.admitted_total + final.skipped_total == final.frontier
        and (
            final.frontier >= joined
            or (
                final.sold_out
                and len(unreached) == joined - final.frontier
                and all(s.outcome in ("sold_out", "abandoned") for s in unreached)
            )
        )
    )

    checks = [
        ("the sale opened and admitted shoppers", bool(admitted)),
        (
            f"active shoppers never exceeded the limit ({max_active_seen} <= {plan.max_active})",
            within_limit,
        ),
        (f"no shopper hit an error ({failed})", failed == 0),
        (
            f"every shopper who kept polling in time was admitted or told the stock was gone "
            f"({len(admitted)} + {len(told_sold_out)} of {stayed}"
            + (
                f"; {late + len(missed) - len(missed_in_time)} came back too late and rightly "
                f"lost their turn"
                if late or missed
                else ""
            )
            + ")",
            wronged == 0
            and len(admitted) + len(told_sold_out)
            == stayed - late - (len(missed) - len(missed_in_time)),
        ),
        (
            f"every place in line was resolved (admitted {final.admitted_total} + skipped "
            f"{final.skipped_total}"
            + (f" + {len(unreached)} not reached once sold out" if unreached else "")
            + f" = joined {joined})",
            resolved,
        ),
        (
            f"Redis agrees with the shoppers (admitted {final.admitted_total} = {len(admitted)} "
            f"seen + {abandoned_admitted} abandoners reached before their absence showed"
            + (f" + {len(missed)} who polled too late to see it" if missed else "")
            + (f" + {sold_out_admitted} who found it sold out" if sold_out_admitted else "")
            + f"; skipped {final.skipped_total})",
            redis_agrees,
        ),
    ]
    buying, bought_figures, bought_checks = purchase_report(result, plan)
    checks += bought_checks
    ok = all(passed for _, passed in checks)

    lat = {
        kind: demo.latency.get(kind, [])
        for kind in ("join", "status", "leave", "hold", "pay", "cancel")
    }
    figures: dict[str, Any] = {
        "ok": ok,
        "sale": demo.sale_id,
        "shoppers": shoppers,
        "admitted": len(admitted),
        "max_active_seen": max_active_seen,
        "max_active": plan.max_active,
        "within_limit": within_limit,
        **bought_figures,
        "skipped": final.skipped_total,
        "abandoned": len(abandoned),
        "abandoned_admitted": abandoned_admitted,
        "left": count("left"),
        "no_shows": count("no_show"),
        "walked_away": count("walked_away"),
        "turned_away": len(turned_away),
        "told_sold_out": len(told_sold_out),
        "skipped_while_polling": len(skipped_polling),
        "skipped_wrongly": len(told_too_long) + len(seen_in_time),
        "missed_admission": len(missed),
        "prequeue": prequeue,
        "joined_after_open": joined - prequeue,
        "admitted_server": final.admitted_total,
        "rate_limited": demo.rate_limited,
        "retries": demo.retries,
        "errors": failed,
        "batches": len(batches),
        "join_ms_p50": rounded(percentile(lat["join"], 0.5), 1000),
        "join_ms_p95": rounded(percentile(lat["join"], 0.95), 1000),
        "status_ms_p50": rounded(percentile(lat["status"], 0.5), 1000),
        "status_ms_p95": rounded(percentile(lat["status"], 0.95), 1000),
        "poll_queue_ms_p95": rounded(queued["status"], 1000),
        "join_queue_ms_p95": rounded(queued["join"], 1000),
        "last_join_s": rounded(None if last_join is None else last_join - opens),
        "wait_prequeue_s_p50": rounded(percentile(pre_waits, 0.5)),
        "wait_prequeue_s_p95": rounded(percentile(pre_waits, 0.95)),
        "wait_after_open_s_p50": rounded(percentile(post_waits, 0.5)),
        "wait_after_open_s_p95": rounded(percentile(post_waits, 0.95)),
        "requests": sum(len(v) for v in demo.latency.values()),
        "cpu_demo_seconds": round(cpu["demo"], 1),
        "cpu_services_seconds": round(cpu["services"], 1),
        "seed": seed,
        "duration_seconds": round(duration, 1),
        **demo.extra,
    }

    def at(t: float | None) -> str:
        return "      -" if t is None else f"{t - opens:+7.1f}s"

    sold_out_at = next((x for x in demo.samples if x.sold_out), None)
    all_paid_at = next((x.t for x in demo.samples if x.sold >= plan.stock), None)
    events: list[tuple[float | None, str]] = [
        (demo.created_at, "sale created; shoppers start arriving"),
        (
            opens,
            f"opening (the admitter drew the pre-queue at {at(opened_at).strip()}): "
            f"{prequeue} places shuffled",
        ),
        (
            admitting[0].t if admitting else None,
            f"first batch: {admitting[0].admitted if admitting else 0} admitted",
        ),
        (full_at, f"{plan.max_active} active: from here the limit paces the line")
        if full_at is not None
        else (None, f"the limit of {plan.max_active} active was never reached"),
        (
            last_join,
            f"last join answered ({joined - prequeue} joined after the opening; "
            f"arrivals were planned until {at(opens + plan.after_open_seconds).strip()})",
        ),
        (admitting[-1].t if admitting else None, f"last admission; {len(batches)} batches in all"),
        (
            result.finished_at,
            "every shopper done, every place resolved"
            if result.drained
            else "gave up waiting for the line to resolve",
        ),
        (
            result.settled_at,
            "no hold left open, the persister drained: PostgreSQL caught up"
            if result.settled_at is not None
            else "gave up waiting for open holds to expire and the persister to drain",
        ),
    ]
    if sold_out_at is not None:
        events.append(
            (
                sold_out_at.t,
                f"sold out for the first time: {sold_out_at.sold} paid "
                f"for, {sold_out_at.held} in holds",
            )
        )
    if all_paid_at is not None:
        events.append((all_paid_at, f"all {plan.stock} units paid for"))
    # in time order; an event that never happened stays where the old fixed order had it
    first_batch = admitting[0].t if admitting else None
    events.sort(
        key=lambda e: (
            e[0]
            if e[0] is not None
            else (first_batch if "never reached" in e[1] and first_batch is not None else math.inf)
        )
    )
    lines = [
        f"FlashSale demo: sale {demo.sale_id}, {shoppers} shoppers, stock {plan.stock}",
        f"  API on 127.0.0.1:{result.port} (2 workers) + 1 admitter + 1 persister; Redis "
        f"prefix {demo.settings.redis_prefix!r}, PostgreSQL schema "
        f"{demo.settings.database_schema!r}; load average at start {cpu['load']:.1f} on "
        f"{os.cpu_count()} CPUs",
        f"  admission: batches of {plan.batch_size} every {plan.batch_interval_ms} ms, at most "
        f"{plan.max_active} active, admissions last {plan.admission_ttl_seconds} s, absent "
        f"after {plan.abandon_after_seconds} s",
        "",
        "Timeline (t = 0 at the opening)",
        *(f"  {at(t)}  {text}" for t, text in events),
        "",
        *_timeline_table(demo, batches),
        "",
        "Shoppers",
        f"  joined {joined} (pre-queue {prequeue}, after the opening {joined - prequeue}); "
        f"turned away at the door once sold out {len(turned_away)}; 429s "
        f"{demo.rate_limited}, retries {demo.retries}, errors {failed}",
        f"  admitted {len(admitted)}: {count('left')} shopped and left, "
        f"{count('walked_away')} walked away from their hold, {count('no_show')} never came "
        f"back (their admissions expired)",
        f"  told the stock was gone while in line {len(told_sold_out)}"
        + (
            f" ({sold_out_admitted} of them admitted, but every unit was held or sold by the "
            f"time they looked)"
            if sold_out_admitted
            else ""
        ),
        f"  abandoned the line {len(abandoned)}: {len(abandoned) - abandoned_admitted} skipped "
        f"by the admitter, {abandoned_admitted} reached before their absence showed",
        f"  max active seen {max_active_seen} / limit {plan.max_active} "
        f"({'within' if within_limit else 'OVER'} the limit; Redis sampled every 100 ms)",
        "",
        "Latency              p50       p95    count",
        *(
            f"  {kind:<12} {fmt(rounded(percentile(v, 0.5), 1000)):>7} ms "
            f"{fmt(rounded(percentile(v, 0.95), 1000)):>6} ms {len(v):>8}"
            for kind, v in lat.items()
        ),
        f"  queued in the demo client before sending, p95: polls "
        f"{fmt(rounded(queued['status'], 1000))} ms, joins {fmt(rounded(queued['join'], 1000))} ms",
        f"  CPU: demo client {cpu['demo']:.0f} s, API + admitter + persister "
        f"{cpu['services']:.0f} s, for {sum(len(v) for v in demo.latency.values())} requests",
        "Wait for admission   p50       p95",
        f"  pre-queue    {fmt(rounded(percentile(pre_waits, 0.5))):>7} s  "
        f"{fmt(rounded(percentile(pre_waits, 0.95))):>6} s   from the opening",
        f"  after open   {fmt(rounded(percentile(post_waits, 0.5))):>7} s  "
        f"{fmt(rounded(percentile(post_waits, 0.95))):>6} s   from arriving",
        f"  noticed      {fmt(rounded(percentile(noticed, 0.5))):>7} s  "
        f"{fmt(rounded(percentile(noticed, 0.95))):>6} s   admission to the poll that saw it",
        "",
        *buying,
        "",
        "Checks",
        *(f"  [{'ok' if passed else 'FAIL'}] {text}" for text, passed in checks),
    ]
    if skipped_polling or missed:
        lines.append(
            f"    {len(skipped_polling)} shoppers lost their place although they kept polling: "
            f"{late} came back after more than {absent_after:g} s of silence (queued in this "
            f"overloaded client: correct to skip them); {len(told_too_long)} had been told to "
            f"wait longer than that; {len(seen_in_time)} were seen within it. "
            f"{len(missed)} polled too late to see their admission "
            f"({len(missed_in_time)} of them within the admission's "
            f"{plan.admission_ttl_seconds} s)"
        )
    for s in [*by.get("error", []), *by.get("unfinished", [])][:5]:
        lines.append(f"    shopper {s.n}: {s.outcome} {s.error or ''}")
    odd = {k: len(v) for k, v in by.items() if k == "closed"}
    if odd:
        lines.append(f"    unexpected outcomes: {odd}")
    lines += ["", f"{'OK' if ok else 'FAILED'} in {duration:.1f} s"]
    return lines, figures, ok


def purchase_report(
    result: SaleResult, plan: Plan
) -> tuple[list[str], dict[str, Any], list[tuple[str, bool]]]:
    """The purchase section: what the shoppers saw, squared with PostgreSQL (read after the
    persister drained) and with Redis (through reconcile) by `invariants`. Returns lines,
    figures, checks."""
    demo, reconciled = result.demo, result.reconcile
    co = demo.checkout
    facts = result.facts
    ledger = facts.ledger if facts else Ledger(plan.stock, 0, 0, {})  # never got that far
    stream = facts.stream if facts else Stream(0, 0, 0)
    seen = co.seen()
    verdict = judge(ledger, seen, stream, reconciled, facts.redis if facts else None)
    stock, held, sold = ledger.stock, ledger.held, ledger.sold
    confirmed_db = {o.id for o in ledger.orders.values() if o.status == "confirmed"}
    orders_in_db = ledger.units("confirmed")
    kept = set(co.confirmed) - set(co.cancelled)
    expected = co.expected()
    mismatched = ended_otherwise(ledger, seen)
    unknown = set(ledger.orders) - set(co.held)  # in PostgreSQL, but no shopper held it
    unended = set(co.held) - set(expected)  # held, but no shopper saw how it ended
    reconcile_ok = not reconcile_problems(reconciled)
    expired = ledger.count("released", "hold expired")
    cancelled = ledger.count("cancelled")
    declined = ledger.count("released", "payment declined")
    failed = ledger.count("failed")
    settled = result.settled_at
    hold_lat, pay_lat = demo.latency.get("hold", []), demo.latency.get("pay", [])
    refused = dict(co.refused.most_common())
    figures: dict[str, Any] = {
        "stock": stock,
        "sold": sold,
        "oversold": verdict.oversold,
        "orders_in_db": orders_in_db,
        "holds_expired": expired,
        "cancelled": cancelled,
        "declined": declined,
        "failed": failed,
        "reconcile_ok": reconcile_ok,
        "held_in_db": held,
        "orders": len(ledger.orders),
        "holds": len(co.held),
        "paid": len(co.confirmed),
        "lost_confirmed": verdict.lost_confirmed,
        "duplicated": verdict.duplicated,
        "stuck": verdict.stuck,
        "dead_letters": len(stream.dead),
        "hold_refusals": refused,
        "hold_replays": co.replays,
        "hold_replays_same": co.replays_same,
        "persister_drained": settled is not None,
        "drained_s": rounded(None if settled is None else settled - demo.opens_at),
        "hold_ms_p50": rounded(percentile(hold_lat, 0.5), 1000),
        "hold_ms_p95": rounded(percentile(hold_lat, 0.95), 1000),
        "pay_ms_p50": rounded(percentile(pay_lat, 0.5), 1000),
        "pay_ms_p95": rounded(percentile(pay_lat, 0.95), 1000),
    }
    refusal_text = ", ".join(f"{code.replace('_', ' ')} {n}" for code, n in refused.items())
    lines = [
        f"Purchases (stock {plan.stock} at ${plan.price_cents / 100:.2f}, at most "
        f"{plan.per_shopper_limit} per shopper, holds last {plan.hold_seconds} s)",
        f"  holds {len(co.held)} ({co.units_held} units); refused: {refusal_text or 'none'}",
        f"  {co.replays} holds sent again with the same Idempotency-Key: the same hold came "
        f"back {co.replays_same} times"
        + (
            f" ({co.replays_late} more sent too late: the admission had expired)"
            if co.replays_late
            else ""
        ),
        f"  paid {len(co.confirmed)} orders ({co.units_confirmed} units); declined "
        f"{len(co.declined)} ({co.retried} tried again); {len(co.walked_away)} holds left "
        f"unpaid; {len(co.cancelled)} cancelled after paying (refunded); {len(co.expired)} "
        f"expired before paying; {len(co.failed)} refused by the database",
        f"  PostgreSQL: sold {sold} + held {held} of {stock} (oversold {verdict.oversold}); "
        f"{len(confirmed_db)} confirmed orders = {orders_in_db} units; released at expiry "
        f"{expired}, declined {declined}, cancelled {cancelled}, failed {failed}",
        f"  persister: stream of {stream.length} entries, lag {stream.lag}, pending "
        f"{stream.pending}, dead letters {len(stream.dead)}; reconcile "
        + (
            "ok: Redis and PostgreSQL agree"
            if reconcile_ok
            else "FAILED: " + "; ".join(reconcile_problems(reconciled))
        ),
    ]
    for oid in mismatched[:5]:
        lines.append(
            f"    order {oid}: shopper saw {expected.get(oid)}, PostgreSQL has "
            f"{ledger.orders.get(oid, 'nothing')}"
        )
    lines += [f"    {problem}" for problem in verdict.problems[:5]]
    checks = [
        (
            f"nothing oversold (PostgreSQL: sold {sold} + held {held} <= stock {stock})",
            verdict.oversold == 0,
        ),
        (
            f"every unit sold is in a confirmed order in PostgreSQL ({orders_in_db} units in "
            f"orders = sold {sold})",
            orders_in_db == sold,
        ),
        (
            f"every purchase a shopper saw confirmed is in PostgreSQL, exactly once, with its "
            f"quantity ({len(co.confirmed)} paid - {len(co.cancelled)} cancelled = "
            f"{len(kept)} = {len(confirmed_db)} confirmed orders)",
            not verdict.lost_confirmed
            and not verdict.duplicated
            and not verdict.wrong_quantity
            and len(co.confirmed) == len(set(co.confirmed))
            and kept == confirmed_db,
        ),
        (
            f"every order ended in PostgreSQL as its shopper saw it ({len(expected)} orders; "
            f"{len(co.walked_away)} unpaid holds expired back to stock)",
            not mismatched and not unknown and not unended,
        ),
        (
            f"a hold sent again with its Idempotency-Key is the same hold ({co.replays_same} of "
            f"{co.replays})",
            co.replays_same == co.replays,
        ),
        (
            "no hold left open, no order left unsettled, and the persister drained ("
            + (f"at {settled - demo.opens_at:+.1f}s" if settled is not None else "not in time")
            + f"; dead letters {len(stream.dead)})",
            settled is not None and not verdict.stuck and not stream_problems(stream, ledger),
        ),
        ("reconcile: Redis agrees with PostgreSQL", reconcile_ok),
    ]
    return lines, figures, checks


def _timeline_table(demo: Crowd, batches: Sequence[Batch]) -> list[str]:
    """Admissions per time slice from the opening, with the room's peak active count."""
    if not demo.samples:
        return []
    end = demo.samples[-1].t
    width = max(2.0, math.ceil((end - demo.opens_at) / 12))
    lines = ["    from t   admitted  skipped  batches  peak active  waiting at end  sold  held"]
    start = demo.opens_at
    while start < end:
        stop = start + width
        in_slice = [b for b in batches if start <= b.t < stop]
        samples = [x for x in demo.samples if start <= x.t < stop]
        if samples:
            lines.append(
                f"  {start - demo.opens_at:+7.0f}s {sum(b.admitted for b in in_slice):9d}"
                f" {sum(b.skipped for b in in_slice):8d} {len(in_slice):8d}"
                f" {max(x.active for x in samples):12d} {samples[-1].waiting:15d}"
                f" {samples[-1].sold:5d} {samples[-1].held:5d}"
            )
        start = stop
    return lines


def run(
    settings: Settings,
    shoppers: int = 3000,
    *,
    after_admission: AfterAdmission = shop,
    plan: Plan | None = None,
) -> int:
    """Run the demo sale; prints the summary, then the JSON line. 0 when every check passed."""
    started = time.time()
    plan = plan or Plan()
    if shoppers < 1:
        print("flashsale demo: --shoppers must be at least 1", file=sys.stderr)
        return 2
    settings = demo_settings(settings)
    for noisy in ("httpx", "httpcore"):  # a log line per request would drown everything
        logging.getLogger(noisy).setLevel(logging.WARNING)
    seed = secrets.randbits(32)
    load = os.getloadavg()[0]
    port = free_port()
    print(
        f"FlashSale demo: starting the API on 127.0.0.1:{port}, an admitter and a persister "
        f"(Redis prefix {settings.redis_prefix!r}, PostgreSQL schema "
        f"{settings.database_schema!r}), then {shoppers} shoppers (progress on stderr)",
        flush=True,
    )
    made: list[str] = []
    logs = Path(tempfile.mkdtemp(prefix="flashsale-demo-"))
    try:
        asyncio.run(migrate(settings))  # `make demo` migrates first; a no-op when up to date
        env = role_env(settings, plan)
        with processes(logs) as procs, runner() as loop:
            procs.start(
                "api",
                [*FLASHSALE, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                env,
            )
            procs.start("admitter", [*FLASHSALE, "admitter"], env)
            procs.start("persister", [*FLASHSALE, "persister"], env)
            try:
                result = loop.run(
                    run_sale(plan, settings, shoppers, port, procs, after_admission, seed, made)
                )
            finally:
                for name in ("api", "admitter", "persister"):
                    tail = procs.log_tail(name, 3000).strip()
                    if tail:
                        print(f"--- {name} log (last lines)\n{tail}", file=sys.stderr)
    except Exception as exc:  # still end with the JSON line: scripts read nothing else
        if not isinstance(exc, SaleFailed):
            traceback.print_exc()
        print(f"flashsale demo: {exc}", file=sys.stderr)
        print(
            json.dumps(
                {
                    "ok": False,
                    "shoppers": shoppers,
                    "admitted": 0,
                    "max_active_seen": 0,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        )
        return 1
    except asyncio.CancelledError:  # SIGTERM; the processes are stopped by now
        print("flashsale demo: stopped", file=sys.stderr)
        return 143
    finally:
        if made:
            with contextlib.suppress(Exception):
                asyncio.run(store.remove_sale(settings, made[0]))
        with contextlib.suppress(OSError):
            for path in logs.iterdir():
                path.unlink()
            logs.rmdir()
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cpu = {
        "demo": own.ru_utime + own.ru_stime,
        "services": children.ru_utime + children.ru_stime,
        "load": load,
    }
    lines, figures, ok = report(result, plan, shoppers, seed, started, cpu)
    print("\n".join(lines))
    print(json.dumps(figures, separators=(",", ":")), flush=True)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m loadtest.demo [--shoppers N]` (`make demo`): settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.demo", description=__doc__)
    parser.add_argument("--shoppers", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"flashsale demo: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    return run(settings, shoppers=args.shoppers)


if __name__ == "__main__":
    sys.exit(main())
