"""`make loadtest` (`python -m loadtest.spike`): a flash sale under a real spike, then proof that
nothing went wrong.

It starts (or reuses) Redis and PostgreSQL, puts HAProxy (`loadtest/haproxy.cfg`, mirroring the
chart's ingress settings) in front of API workers (`flashsale api --workers 1` each on its own
port, balanced by HAProxy: on 2 cores that beats one uvicorn with 2 workers sharing a socket,
since HAProxy's leastconn spreads the load evenly and checks each worker's /readyz), starts an
admitter and a persister, all on 127.0.0.1 under a Redis prefix and PostgreSQL schema of their
own (`spike`, `flashsale_spike`: emptied at the start of a run), creates a quantity sale and a
seated sale opening a few seconds later, and runs locust headless (`loadtest/locustfile.py`:
shoppers, an ops user, a scraper; the `FlashSpike` shape) against HAProxy for a bounded time,
sampling Redis and PostgreSQL every 0.5 s. Then it waits for unpaid holds to expire and the
persister to drain, and checks, per sale:

- nothing oversold: PostgreSQL's sold + held <= stock, Redis's sold <= stock, and the two agree;
  the units of confirmed orders add up to what is sold;
- no seat sold twice (confirmed orders' seats are distinct) and the seat bitmap holds exactly
  the sold seats;
- every purchase a shopper saw confirmed is a confirmed order in PostgreSQL, once, with its
  quantity (`lost_orders` counts those missing), and every declined, walked-away or expired
  hold ended released;
- the orders stream is drained: nothing unread (lag 0), nothing unacknowledged (pending 0),
  nothing dead-lettered;
- admission followed queue order, batch by batch (`admission_order`): with the batches in the
  order they were cut, each batch took the positions from the previous frontier to its own
  (the frontiers chain: f_i = f_(i-1) + admitted_i + skipped_i, the last one is the room's),
  exactly admitted_i of the positions in that window hold an admitted place (Redis's admitted
  bitmap, join indices mapped to positions through the pre-queue draw), no place beyond the
  last frontier is admitted, and every shopper told "admitted" stands on an admitted place. So
  nobody was admitted ahead of anyone waiting in front of them: a place is passed over only by
  being skipped (absent) in its own batch, and a skipped place is never admitted later;
- the active count never exceeded max_active (sampled), and reconcile says Redis and
  PostgreSQL agree.

It writes `reports/loadtest-<timestamp>/` (report.md, locust's CSVs, the samples, PNG plots
over time, the rendered haproxy.cfg, every process's log) and prints, as its LAST stdout line,
one JSON object: invariants_ok, stock, sold, oversold, lost_orders, requests, failures, report,
and more. It stops everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import math
import os
import secrets
import shutil
import string
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.db import migrate
from flashsale.waiting_room.keys import SaleKeys
from flashsale.waiting_room.redis_client import RedisClient, binary, open_redis
from flashsale.waiting_room.room import place_of
from flashsale.waiting_room.status import RoomView
from loadtest.harness import haproxy as ingress
from loadtest.harness import store
from loadtest.harness.invariants import (
    Seen,
    admission_problems,
    ended_otherwise,
    judge,
    stream_problems,
)
from loadtest.harness.processes import (
    FAST_ROLES,
    FLASHSALE,
    ROOT,
    Procs,
    ensure_services,
    ensure_tool,
    free_port,
    install_env,
    log,
    processes,
    wait_port,
    wait_ready,
)
from loadtest.harness.report import final_line, pyplot

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest.spike", description=__doc__.split("\n")[0])
    p.add_argument("--users", "-u", type=int, default=1500, help="shoppers at the peak")
    p.add_argument(
        "--spawn-rate",
        "-r",
        type=float,
        default=500,
        help="shoppers arriving per second in the burst at the opening",
    )
    p.add_argument("--seconds", type=float, default=90, help="load after the opening")
    p.add_argument(
        "--lead",
        type=float,
        default=6,
        help="seconds from the sales' creation to their opening (the pre-queue forms)",
    )
    p.add_argument("--stock", type=int, default=3000, help="units of the quantity sale")
    p.add_argument("--seats", type=int, default=1500, help="seats of the seated sale")
    p.add_argument("--hold-seconds", type=int, default=15, help="unpaid holds expire after")
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--batch-interval-ms", type=int, default=500)
    p.add_argument("--max-active", type=int, default=300)
    p.add_argument(
        "--api-workers",
        type=int,
        default=2,
        help="`flashsale api --workers 1` processes behind HAProxy",
    )
    p.add_argument("--locust-processes", type=int, default=1)
    p.add_argument("--haproxy-threads", type=int, default=1)
    p.add_argument(
        "--rate-limit",
        type=int,
        default=1200,
        help="requests per client address per period (chart: 1200 per 10s)",
    )
    p.add_argument("--prefix", default="spike", help="Redis key prefix (emptied at start)")
    p.add_argument(
        "--schema",
        default="flashsale_spike",
        help="PostgreSQL schema (dropped and migrated at start)",
    )
    p.add_argument("--report-root", default=str(ROOT / "reports"))
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="longest wait for holds to expire and the persister to drain",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install haproxy")
    p.add_argument(
        "--progress-seconds", type=float, default=5, help="a progress line on stderr this often"
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove the Redis keys and the schema at the end"
    )
    return p.parse_args(argv)


# -- the sales ---------------------------------------------------------------------------------


def seat_map(seats: int) -> dict[str, Any]:
    """`seats` seats in rows of up to 25, ten rows a section."""
    rows = [min(25, seats - start) for start in range(0, seats, 25)]
    sections = []
    for s in range(0, len(rows), 10):
        sections.append(
            {
                "name": f"Section {s // 10 + 1}",
                "rows": [
                    {"name": string.ascii_uppercase[i % 26] + str(i // 26 or ""), "seats": n}
                    for i, n in enumerate(rows[s : s + 10])
                ],
            }
        )
    return {"sections": sections}


def sale_bodies(args: argparse.Namespace, stamp: str, opens_at: float) -> list[dict[str, Any]]:
    opens = datetime.fromtimestamp(opens_at, UTC)
    common = {
        "opens_at": opens.isoformat(),
        "closes_at": (opens + timedelta(hours=1)).isoformat(),
        "timezone": "UTC",
        "per_shopper_limit": 4,
        "hold_seconds": args.hold_seconds,
        "price_cents": 4900,
        "currency": "USD",
        "admission": {
            "batch_size": args.batch_size,
            "batch_interval_ms": args.batch_interval_ms,
            "max_active": args.max_active,
            "admission_ttl_seconds": 30,
            "abandon_after_seconds": 10,
        },
    }
    return [
        {"id": f"spike-q-{stamp}", "name": "Spike: sneakers", "stock": args.stock, **common},
        {
            "id": f"spike-s-{stamp}",
            "name": "Spike: concert",
            "seat_map": seat_map(args.seats),
            **common,
        },
    ]


def http_json(
    method: str, url: str, token: str, body: Any = None, timeout: float = 15
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# -- sampling --------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Samples every sale's room, stock and orders every 0.5 s, from Redis and PostgreSQL, and
    collects every admission batch (Redis keeps the last 64 only)."""

    settings: Settings
    sales: list[dict[str, Any]]
    every: float = 0.5
    samples: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    stop: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def keys(self, sale_id: str) -> SaleKeys:
        return store.keys_of(self.settings, sale_id)

    async def sample(self, redis: RedisClient, conn: asyncpg.Connection) -> None:
        now = time.time()
        rows = await conn.fetch(
            "SELECT sale_id, status, count(*) AS n, sum(quantity) AS units"
            " FROM orders GROUP BY 1, 2"
        )
        db = {(r["sale_id"], r["status"]): (r["n"], r["units"]) for r in rows}
        for sale in self.sales:
            k = self.keys(sale["id"])
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hmget(
                    k.meta,
                    [
                        "pre",
                        "seq",
                        "P",
                        "frontier",
                        "admitted_total",
                        "skipped_total",
                        "opened",
                        "sold_out",
                    ],
                )
                pipe.zcount(k.active, f"({int(now * 1000)}", "+inf")
                pipe.hmget(k.inventory, ["held", "sold", "avail"])
                pipe.lrange(k.batches, 0, -1)
                pipe.zcard(k.holds)
                meta, active, inv, batches, holds = await pipe.execute()
            pre, seq, _, frontier, admitted, skipped, opened, sold_out = (int(x or 0) for x in meta)
            joined = seq if opened else pre
            self.batches[sale["id"]].update(batches)
            self.samples.append(
                {
                    "t": round(now, 3),
                    "sale": sale["id"],
                    "joined": joined,
                    "waiting": max(0, seq - frontier) if opened else pre,
                    "frontier": frontier,
                    "admitted": admitted,
                    "skipped": skipped,
                    "active": active,
                    "held": int(inv[0] or 0),
                    "sold": int(inv[1] or 0),
                    "avail": int(inv[2] or 0),
                    "open_holds": holds,
                    "sold_out": sold_out,
                    "pg_confirmed_units": int(
                        (db.get((sale["id"], "confirmed")) or (0, 0))[1] or 0
                    ),
                    "pg_orders": sum(n for (s, _), (n, _) in db.items() if s == sale["id"]),
                }
            )

    async def run(self) -> None:
        redis = await open_redis(self.settings)
        conn = await asyncpg.connect(
            self.settings.database_url,
            server_settings={"search_path": self.settings.database_schema},
        )
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                try:
                    await self.sample(redis, conn)
                except Exception as exc:  # keep sampling: one slow answer is not the end
                    self.error = f"{type(exc).__name__}: {exc}"
                next_at += self.every
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await conn.close()
            await redis.aclose()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        thread.start()
        return thread


# -- settling and checking -------------------------------------------------------------------


async def settle(
    settings: Settings, sales: list[dict[str, Any]], within: float, procs: Procs
) -> float | None:
    """Wait until no hold is open anywhere and the persister has written every entry; the
    seconds it took, or None if that did not happen in time."""
    started = time.monotonic()
    redis = await open_redis(settings)
    conn = await store.connect(settings)
    try:
        while time.monotonic() - started < within:
            procs.check()
            done = True
            for sale in sales:
                keys = store.keys_of(settings, sale["id"])
                stream = await store.read_stream(redis, keys)
                holds = await redis.zcard(keys.holds)
                held = await conn.fetchval(
                    "SELECT held FROM sale_inventory WHERE sale_id = $1", sale["id"]
                )
                done = done and not stream.lag and not stream.pending and not holds and not held
            if done:
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        return None
    finally:
        await conn.close()
        await redis.aclose()


def read_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("orders-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def seen_by_shoppers(records: list[dict[str, Any]], sale_id: str) -> tuple[Seen, dict[str, Any]]:
    """What the locust shoppers of one sale were told (their records), and those records by
    event."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("sale") == sale_id:
            by[r["event"]].append(r)
    seen = Seen(confirmed=[(r["order"], int(r["quantity"])) for r in by["confirmed"]])
    for kind in ("declined", "walked", "expired"):
        for r in by[kind]:
            seen.ends[r["order"]] = ("released", "")
    return seen, by


async def check_sale(
    settings: Settings,
    sale: dict[str, Any],
    records: list[dict[str, Any]],
    batches_seen: set[str],
    samples: list[dict[str, Any]],
    internal: str,
) -> dict[str, Any]:
    """Every invariant of one sale (`harness.invariants`), from PostgreSQL, Redis and what
    its shoppers saw."""
    sale_id = sale["id"]
    facts = await store.read_facts(settings, sale_id)
    room = await store.read_room(settings, sale_id)
    seat_bits: set[int] = set()
    if sale["seated"]:
        raw = await open_redis(settings, decode=False)
        try:
            seat_bits = store.bits(binary(await raw.get(store.keys_of(settings, sale_id).seats)))
        finally:
            await raw.aclose()
    ledger, stream, redis_stock = facts.ledger, facts.stream, facts.redis
    batches_seen |= set(room.batches)
    seen, by = seen_by_shoppers(records, sale_id)
    status, reconciled = http_json(
        "GET", f"{internal}/admin/sales/{sale_id}/reconcile", settings.admin_token
    )
    verdict = judge(ledger, seen, stream, reconciled if status == 200 else None, redis_stock)
    not_released = ended_otherwise(ledger, seen)
    sold_seats = {s for o in ledger.orders.values() if o.status == "confirmed" for s in o.seats}
    confirmed_units = ledger.units("confirmed")
    view = RoomView.from_redis(room.meta, [])
    positions = [place_of(view, j) for j in room.admitted] if view.opened else []
    told = [int(r["position"]) - 1 for r in by["admitted"] if r.get("position")]
    order_problems = admission_problems(
        store.parse_batches(sorted(batches_seen)),
        positions,
        view.frontier if view.opened else 0,
        told,
    )
    max_active = max((s["active"] for s in samples if s["sale"] == sale_id), default=0)
    r_sold, r_held = redis_stock.sold or 0, redis_stock.held or 0
    checks = {
        "not oversold (PostgreSQL and Redis: sold + held <= stock)": verdict.oversold == 0,
        "Redis and PostgreSQL agree on what is sold": r_sold == ledger.sold
        and r_held == ledger.held,
        "confirmed orders add up to what is sold": confirmed_units == ledger.sold,
        "no seat sold twice": not verdict.seats_twice,
        "every purchase seen confirmed is confirmed in PostgreSQL, once, with its quantity": (
            not verdict.lost_confirmed and not verdict.duplicated and not verdict.wrong_quantity
        ),
        "declined, walked-away and expired holds ended released": not not_released,
        "no order left in a state that is not final": not verdict.stuck,
        "orders stream drained (lag 0, pending 0, no dead letters)": not stream_problems(stream)
        and not stream.dead,
        "admission followed queue order, batch by batch": not order_problems,
        f"active shoppers never above max_active ({sale['max_active']}; sampled)": max_active
        <= sale["max_active"],
        "reconcile: Redis agrees with PostgreSQL": status == 200
        and bool(reconciled and reconciled.get("ok")),
    }
    if sale["seated"]:
        checks["seat bitmap holds exactly the sold seats"] = seat_bits == sold_seats
    meta = room.meta
    return {
        "sale": sale_id,
        "seated": sale["seated"],
        "stock": ledger.stock,
        "sold": ledger.sold,
        "held": ledger.held,
        "redis_sold": r_sold,
        "oversold": verdict.oversold,
        "orders_in_db": len(ledger.orders),
        "confirmed_units": confirmed_units,
        "confirmed_seen": len(seen.confirmed),
        "lost_orders": verdict.lost_confirmed,
        "confirmed_twice": verdict.duplicated,
        "wrong_quantity": verdict.wrong_quantity,
        "not_released": len(not_released),
        "confirmed_unseen": verdict.confirmed_unseen,
        "seats_double_sold": verdict.seats_twice,
        "stuck": verdict.stuck,
        "stream": {
            "length": stream.length,
            "lag": stream.lag,
            "pending": stream.pending,
            "dead": len(stream.dead),
        },
        "joined": int(meta.get("seq") or 0) if view.opened else int(meta.get("pre") or 0),
        "prequeue": view.prequeue,
        "admitted": len(room.admitted),
        "skipped": int(meta.get("skipped_total") or 0),
        "batches": len(batches_seen),
        "admission_order": order_problems[:5],
        "max_active_seen": max_active,
        "held_events": len(by["held"]),
        "declined": len(by["declined"]),
        "walked": len(by["walked"]),
        "expired": len(by["expired"]),
        "failed": len(by["failed"]),
        "checks": checks,
        "ok": all(checks.values()),
    }


# -- locust's figures ------------------------------------------------------------------------


def locust_stats(prefix: Path) -> dict[str, dict[str, Any]]:
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    with path.open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


# -- plots -----------------------------------------------------------------------------------


def plots(
    folder: Path,
    samples: list[dict[str, Any]],
    sales: list[dict[str, Any]],
    opens_at: float,
    history: Path,
) -> list[str]:
    """PNG plots over time (t = 0 at the opening); the file names, or [] without matplotlib."""
    plt = pyplot()
    if plt is None:
        return []
    made = []

    def series(sale_id: str, name: str) -> tuple[list[float], list[float]]:
        rows = [s for s in samples if s["sale"] == sale_id]
        return [s["t"] - opens_at for s in rows], [s[name] for s in rows]

    def rate(ts: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
        out_t, out_y = [], []
        for i in range(1, len(ts)):
            if ts[i] > ts[i - 1]:
                out_t.append(ts[i])
                out_y.append((ys[i] - ys[i - 1]) / (ts[i] - ts[i - 1]))
        return out_t, out_y

    figures = [
        (
            "arrivals.png",
            "Arrivals",
            [("joined", "joined (total)", False), ("joined", "arrivals per second", True)],
        ),
        ("waiting.png", "Waiting in line", [("waiting", "waiting", False)]),
        (
            "admitted.png",
            "Admission",
            [
                ("admitted", "admitted (total)", False),
                ("skipped", "skipped (total)", False),
                ("active", "active now", False),
            ],
        ),
        (
            "sold.png",
            "Stock",
            [
                ("sold", "sold (Redis)", False),
                ("pg_confirmed_units", "confirmed (PostgreSQL)", False),
                ("held", "in holds", False),
            ],
        ),
    ]
    for name, title, lines in figures:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        twin = None
        for sale in sales:
            short = "seated" if sale["seated"] else "quantity"
            for column, label, as_rate in lines:
                ts, ys = series(sale["id"], column)
                if as_rate:
                    twin = twin or ax.twinx()
                    rt, ry = rate(ts, ys)
                    twin.plot(rt, ry, linestyle=":", label=f"{short}: {label}")
                    twin.set_ylabel("per second")
                else:
                    ax.plot(ts, ys, label=f"{short}: {label}")
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("seconds from the opening")
        ax.set_title(title)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        made.append(name)

    if history.exists():
        with history.open() as f:
            rows = list(csv.DictReader(f))
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
        for req in ("Aggregated", "join", "status", "hold", "pay"):
            pts = [(float(r["Timestamp"]) - opens_at, r) for r in rows if r["Name"] == req]
            pts = [(t, r) for t, r in pts if r.get("95%") not in (None, "", "N/A")]
            if not pts:
                continue
            if req == "Aggregated":
                for pct, style in (("50%", "-"), ("95%", "--"), ("99%", ":")):
                    top.plot(
                        [t for t, _ in pts],
                        [float(r[pct]) for _, r in pts],
                        style,
                        label=f"all requests p{pct[:-1]}",
                        color="black",
                    )
                bottom.plot(
                    [t for t, _ in pts],
                    [float(r["Requests/s"]) for _, r in pts],
                    label="requests/s",
                    color="black",
                )
                bottom.plot(
                    [t for t, _ in pts],
                    [float(r["Failures/s"]) for _, r in pts],
                    label="failures/s",
                    color="red",
                )
                bottom.plot(
                    [t for t, _ in pts],
                    [float(r["User Count"]) for _, r in pts],
                    label="locust users",
                    color="grey",
                    linestyle="--",
                )
            else:
                top.plot(
                    [t for t, _ in pts],
                    [float(r["95%"]) for _, r in pts],
                    label=f"{req} p95",
                    alpha=0.7,
                )
        top.set_yscale("log")
        top.set_ylabel("latency, ms")
        top.set_title("Latency percentiles (locust, over the last seconds)")
        top.legend(fontsize=8)
        bottom.set_xlabel("seconds from the opening")
        bottom.set_title("Throughput")
        bottom.legend(fontsize=8)
        for ax in (top, bottom):
            ax.axvline(0, color="grey", linewidth=0.8)
        fig.tight_layout()
        fig.savefig(folder / "latency.png", dpi=90)
        plt.close(fig)
        made.append("latency.png")
    return made


# -- the run ---------------------------------------------------------------------------------


async def reset(settings: Settings, drop_only: bool = False) -> None:
    """Empty the spike's Redis prefix and PostgreSQL schema (they are the spike's own)."""
    await store.drop_install(settings)
    if not drop_only:
        await migrate(settings)


def progress_line(elapsed: float, folder: Path, samples: list[dict[str, Any]]) -> str:
    """One line of progress: locust's latest totals (its CSV history, written every second)
    and the rooms' latest samples."""
    users = requests = failures = "?"
    history = folder / "locust_stats_history.csv"
    if history.exists():
        with history.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
        if rows:
            last = rows[-1]
            users = last.get("User Count", "?")
            requests = last.get("Total Request Count", "?")
            failures = last.get("Total Failure Count", "?")
    latest: dict[str, dict[str, Any]] = {}
    for sample in samples[-8:]:
        latest[sample["sale"]] = sample
    admitted = sum(int(x["admitted"]) for x in latest.values())
    sold = sum(int(x["sold"]) for x in latest.values())
    return (
        f"spike: {elapsed:6.0f} s  users {users}  requests {requests}  failures {failures}  "
        f"admitted {admitted}  sold {sold}"
    )


def report_markdown(
    args: argparse.Namespace,
    out: dict[str, Any],
    results: list[dict[str, Any]],
    stats: dict[str, dict[str, Any]],
    haproxy: list[dict[str, str]],
    images: list[str],
) -> str:
    lines = [
        f"# FlashSale spike: {out['started']}",
        "",
        f"{args.users} shoppers at the peak (burst at {args.spawn_rate:g}/s at the opening), "
        f"{args.seconds:g} s of load after a {args.lead:g} s pre-queue; {args.api_workers} API "
        f"workers behind HAProxy (leastconn, rate limit {args.rate_limit}/10s per address), "
        f"one admitter, one persister; {os.cpu_count()} CPUs, load average "
        f"{out['load_average']:.1f} at the start.",
        "",
        f"**Invariants: {'all hold' if out['invariants_ok'] else 'BROKEN'}** — sold "
        f"{out['sold']} of {out['stock']}, oversold {out['oversold']}, lost orders "
        f"{out['lost_orders']}; {out['requests']} requests, {out['failures']} failures; "
        f"settled (holds expired, persister drained) in {out['settle_seconds']} s.",
        "",
        "## Checks",
        "",
    ]
    for r in results:
        lines.append(f"### {r['sale']} ({'seated' if r['seated'] else 'quantity'})")
        lines.append("")
        for text, ok in r["checks"].items():
            lines.append(f"- [{'x' if ok else ' '}] {text}")
        lines += [
            "",
            f"stock {r['stock']}, sold {r['sold']} (Redis {r['redis_sold']}), held {r['held']}; "
            f"{r['orders_in_db']} orders in PostgreSQL; shoppers saw {r['confirmed_seen']} "
            f"confirmed, {r['declined']} declined, {r['walked']} walked away, {r['expired']} "
            f"expired; joined {r['joined']} (pre-queue {r['prequeue']}), admitted "
            f"{r['admitted']}, skipped {r['skipped']} in {r['batches']} batches; max active "
            f"seen {r['max_active_seen']}; stream {r['stream']}.",
            "",
        ]
        for problem in r["admission_order"]:
            lines.append(f"    {problem}")
    lines += [
        "## Requests (locust)",
        "",
        "| request | count | failures | median ms | p95 ms | p99 ms | max ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in stats.items():
        lines.append(
            f"| {row.get('Type', '')} {name} | {row['Request Count']} | "
            f"{row['Failure Count']} | {row['Median Response Time']} | {row['95%']} | "
            f"{row['99%']} | {float(row['Max Response Time']):.0f} | "
            f"{float(row['Requests/s']):.1f} |"
        )
    if out.get("cpu_seconds"):
        lines += [
            "",
            "## CPU seconds by process (the whole run)",
            "",
            ", ".join(f"{k} {v}" for k, v in out["cpu_seconds"].items()),
            "",
        ]
    if haproxy:
        lines += [
            "",
            "## HAProxy",
            "",
            "| proxy | server | sessions | 2xx | 4xx | 5xx | denied | queue max |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in haproxy:
            lines.append(
                f"| {row.get('pxname')} | {row.get('svname')} | {row.get('stot')} | "
                f"{row.get('hrsp_2xx')} | {row.get('hrsp_4xx')} | "
                f"{row.get('hrsp_5xx')} | {row.get('dreq')} | {row.get('qmax')} |"
            )
    if images:
        lines += ["", "## Over time (t = 0 at the opening)", ""]
        lines += [f"![{name}]({name})" for name in images]
    lines += [
        "",
        "## Files",
        "",
        "`locust.html` (locust's own report), `locust_*.csv` (locust), `samples.json` "
        "(Redis and PostgreSQL every 0.5 s), "
        "`haproxy.cfg` (as run), `logs/` (every process), `orders-*.jsonl` (what the "
        "shoppers saw)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(args.report_root)
    folder = root / f"loadtest-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "invariants_ok": False,
        "stock": 0,
        "sold": 0,
        "oversold": 0,
        "lost_orders": 0,
        "requests": 0,
        "failures": 0,
        "report": str(folder),
        "started": datetime.now(UTC).isoformat(),
        "load_average": os.getloadavg()[0],
    }
    if importlib.util.find_spec("locust") is None:  # not imported: it monkey-patches with gevent
        out["error"] = "locust is not installed: pip install -e '.[loadtest]'"
        log(f"spike: {out['error']}")
        final_line(out)
        return 1
    urls = ensure_services()
    haproxy = ensure_tool("haproxy", "haproxy", install=not args.no_install)
    if haproxy is None:
        out["error"] = "haproxy is not installed (Debian package haproxy)"
        final_line(out)
        return 1
    settings = Settings.from_env(
        redis_url=urls["REDIS_URL"],
        database_url=urls["DATABASE_URL"],
        redis_prefix=args.prefix,
        database_schema=args.schema,
        admin_token=secrets.token_urlsafe(24),
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
    )
    log(f"spike: report in {folder}; Redis prefix {args.prefix!r}, schema {args.schema!r}")
    asyncio.run(reset(settings))
    api_ports = [free_port() for _ in range(args.api_workers)]
    public, internal = free_port(), free_port()
    cfg = folder / "haproxy.cfg"
    run_dir = Path(tempfile.mkdtemp(prefix="fs-spike-"))  # a unix socket's path is short
    cfg.write_text(
        ingress.render(
            run_dir,
            public,
            internal,
            [("127.0.0.1", port) for port in api_ports],
            rate_requests=args.rate_limit,
            threads=args.haproxy_threads,
        )
    )
    env = install_env(urls, settings, **FAST_ROLES)
    sampler: Sampler | None = None
    results: list[dict[str, Any]] = []
    hastats: list[dict[str, str]] = []
    sales: list[dict[str, Any]] = []
    opens_at = time.time() + args.lead
    settle_s: float | None = None
    try:
        with processes(folder / "logs") as procs:
            problem = ingress.config_problem(haproxy, cfg)
            if problem:
                raise RuntimeError(f"haproxy refused {cfg}: {problem}")
            api = [*FLASHSALE, "api", "--workers", "1", "--host", "127.0.0.1"]
            for n, port in enumerate(api_ports):
                procs.start(f"api{n + 1}", [*api, "--port", str(port)], env)
            procs.start("admitter", [*FLASHSALE, "admitter"], env)
            procs.start("persister", [*FLASHSALE, "persister"], env)
            procs.start("haproxy", [haproxy, "-db", "-f", str(cfg)], env)
            for port in api_ports:
                wait_ready(f"http://127.0.0.1:{port}/readyz", 60, procs)
            wait_port(public, 20, procs)
            entry = f"http://127.0.0.1:{internal}"
            wait_ready(f"{entry}/readyz", 20, procs)
            opens_at = math.ceil(time.time() + args.lead)
            for body in sale_bodies(args, datetime.now().strftime("%H%M%S"), opens_at):
                status, made = http_json("POST", f"{entry}/admin/sales", settings.admin_token, body)
                if status != 201:
                    raise RuntimeError(f"creating sale {body['id']} answered {status}: {made}")
                sales.append(
                    {
                        "id": body["id"],
                        "seated": "seat_map" in body,
                        "weight": 3 if "stock" in body else 1,
                        "max_active": args.max_active,
                    }
                )
            log(
                f"spike: sales {', '.join(s['id'] for s in sales)} open at "
                f"{datetime.fromtimestamp(opens_at, UTC):%H:%M:%S} UTC"
            )
            sampler = Sampler(settings, sales)
            thread = sampler.start()
            run_time = max(1, round(opens_at - time.time() + args.seconds))
            locust_env = {
                **env,
                "SPIKE_SALES": json.dumps(sales),
                "SPIKE_OPENS_AT": str(opens_at),
                "SPIKE_INTERNAL": entry,
                "SPIKE_ADMIN_TOKEN": settings.admin_token,
                "SPIKE_OUT": str(folder),
            }
            argv = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "-u",
                str(args.users),
                "-r",
                f"{args.spawn_rate:g}",
                "--run-time",
                f"{run_time}s",
                "-H",
                f"http://127.0.0.1:{public}",
                "--csv",
                str(folder / "locust"),
                "--csv-full-history",
                "--only-summary",
                "--html",
                str(folder / "locust.html"),
                "--loglevel",
                "WARNING",
                "--stop-timeout",
                "0",
                "--exit-code-on-error",
                "0",
            ]
            if args.locust_processes > 1:
                argv += ["--processes", str(args.locust_processes)]
            log(
                f"spike: locust -u {args.users} -r {args.spawn_rate:g} --run-time {run_time}s "
                f"against HAProxy on :{public}"
            )
            locust = procs.start("locust", argv, locust_env)
            deadline = time.monotonic() + run_time + 120
            cpu: dict[str, float] = {}
            shown = time.monotonic()
            while locust.poll() is None:
                if time.monotonic() - shown >= args.progress_seconds:
                    shown = time.monotonic()
                    log(progress_line(time.time() - started, folder, sampler.samples))
                cpu.update(procs.cpu())  # the last reading before each process ends
                for name, proc in procs.procs.items():
                    if name != "locust" and proc.poll() is not None:
                        raise RuntimeError(f"{name} died during the load (see {folder}/logs)")
                if time.monotonic() > deadline:
                    raise RuntimeError("locust did not stop in time")
                time.sleep(0.5)
            procs.stop("locust")
            log("spike: load over; waiting for unpaid holds to expire and the persister to drain")
            within = args.settle_seconds or args.hold_seconds + 30
            settle_s = asyncio.run(settle(settings, sales, within, procs))
            sampler.stop.set()
            thread.join(5)
            records = read_records(folder)
            for sale in sales:
                results.append(
                    asyncio.run(
                        check_sale(
                            settings,
                            sale,
                            records,
                            sampler.batches[sale["id"]],
                            sampler.samples,
                            entry,
                        )
                    )
                )
            hastats = ingress.stats(run_dir / "haproxy.sock")
            cpu.update(procs.cpu())
            out["cpu_seconds"] = {k: round(v, 1) for k, v in sorted(cpu.items())}
            scraped = [r for r in records if r.get("event") == "scraper"]
            out["rate_limited_429"] = scraped[0]["limited"] if scraped else 0
            out["scraper_sent_before_429"] = (
                scraped[0]["sent"] - scraped[0]["limited"] if scraped else None
            )
    except Exception as exc:  # still write what there is, and end with the JSON line
        import traceback

        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            sampler.stop.set()
        shutil.rmtree(run_dir, ignore_errors=True)
        if args.cleanup:
            try:
                asyncio.run(reset(settings, drop_only=True))
            except Exception as exc:  # the report matters more than the clean-up
                log(f"spike: clean-up failed: {exc}")

    stats = locust_stats(folder / "locust")
    samples = sampler.samples if sampler else []
    (folder / "samples.json").write_text(json.dumps(samples))
    images = plots(folder, samples, sales, opens_at, folder / "locust_stats_history.csv")
    total = stats.get("Aggregated", {})
    out.update(
        {
            "invariants_ok": bool(results)
            and all(r["ok"] for r in results)
            and "error" not in out
            and settle_s is not None,
            "stock": sum(r["stock"] for r in results),
            "sold": sum(r["sold"] for r in results),
            "oversold": sum(r["oversold"] for r in results),
            "lost_orders": sum(r["lost_orders"] for r in results),
            "requests": int(total.get("Request Count") or 0),
            "failures": int(total.get("Failure Count") or 0),
            "rps": round(float(total.get("Requests/s") or 0), 1),
            "seats_double_sold": sum(r["seats_double_sold"] for r in results),
            "admission_order_ok": bool(results)
            and all(r["checks"]["admission followed queue order, batch by batch"] for r in results),
            "stream_lag": sum(r["stream"]["lag"] for r in results),
            "stream_pending": sum(r["stream"]["pending"] for r in results),
            "confirmed_seen": sum(r["confirmed_seen"] for r in results),
            "joined": sum(r["joined"] for r in results),
            "admitted": sum(r["admitted"] for r in results),
            "max_active_seen": max((r["max_active_seen"] for r in results), default=0),
            "settle_seconds": None if settle_s is None else round(settle_s, 1),
            "sampler_error": sampler.error if sampler else None,
            "latency_ms": {
                name: {
                    "p50": _num(row.get("50%")),
                    "p95": _num(row.get("95%")),
                    "p99": _num(row.get("99%")),
                }
                for name, row in stats.items()
                if name in ("join", "status", "hold", "pay", "leave", "Aggregated")
            },
            "failed_checks": [
                f"{r['sale']}: {text}"
                for r in results
                for text, ok in r["checks"].items()
                if not ok
            ],
            "seconds": round(time.time() - started, 1),
            "sales": {
                r["sale"]: {
                    k: r[k]
                    for k in (
                        "stock",
                        "sold",
                        "oversold",
                        "lost_orders",
                        "confirmed_seen",
                        "joined",
                        "admitted",
                        "skipped",
                        "batches",
                        "max_active_seen",
                    )
                }
                for r in results
            },
        }
    )
    (folder / "report.md").write_text(report_markdown(args, out, results, stats, hastats, images))
    (folder / "result.json").write_text(json.dumps(out, indent=2, default=str))
    print(
        f"FlashSale spike: {'invariants hold' if out['invariants_ok'] else 'INVARIANTS BROKEN'}"
        f" — {out['requests']} requests ({out['failures']} failures, {out['rps']} req/s), "
        f"sold {out['sold']} of {out['stock']}, oversold {out['oversold']}, lost orders "
        f"{out['lost_orders']}; report {folder / 'report.md'}"
    )
    for text in out["failed_checks"]:
        print(f"  FAILED {text}")
    final_line(out)
    return 0 if out["invariants_ok"] else 1


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
