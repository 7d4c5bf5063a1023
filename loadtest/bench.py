"""`make bench` (`python -m loadtest.bench`): FlashSale's hot paths measured against references,
side by side in one run, each figure printed with its target.

Method (the machine is small, shared and noisy, so only ratios measured within one run count):

- Every HTTP server is started by `loadtest/serve.py`, which runs `flashsale api` itself with
  only the app swapped: FlashSale, a bare Starlette endpoint (`loadtest.apps:bare`) and a
  row-lock purchase (`loadtest.apps:rowlock`) get the same server, settings and workers.
  `--servers granian,uvicorn` measures FlashSale and the bare endpoint under each HTTP server
  in the same rounds (the ratios of the first are the headline; each server's own ratios and
  rates are printed beside them). `--against DIR` does the same for another checkout of
  FlashSale (`git worktree add /tmp/base <commit>`): its own `loadtest.serve` serves its own
  code (the same venv, its folder first on the path) on this run's sales, as `base`, so a
  change is measured against the code before it in the same rounds. That works while the
  other checkout reads the Redis and PostgreSQL this one writes (true of 231fa12, the commit
  before the one front door).
- The load generator is `wrk` (C, one thread, keep-alive connections, Lua scripts in
  `loadtest/wrk/` for headers, bodies and rotating tickets or tokens). With two or more CPUs
  the servers are pinned to the last CPU and wrk to the first (`taskset`), so the client never
  takes the server's CPU; Redis and PostgreSQL float.
- After a warm-up of every kind, each round measures every kind for `--seconds`, in an order
  rotated from round to round; a ratio is taken within each round (neighbours in time share
  the machine's mood) and the median over the rounds is reported.
- The persister's drain rate: the holds the purchase rounds left in the sale's stream (no
  persister runs during the rounds) are drained by a fresh `flashsale persister`; the rate is
  measured from its first acknowledged batch until nothing is unread or pending.
- Redis memory: 1,000,000 visitors join a pre-queue through the join script itself (the same
  Lua the API runs, pipelined, not over HTTP) under a prefix of their own; the bytes are
  MEMORY USAGE summed over the sale's keys, divided by the waiters (INFO's used_memory delta is
  printed beside it, as a cross-check that a shared server makes noisy). The join rate-limit
  counters are short-lived (one rate window) and not part of a waiter's state: the
  measurement uses a 2 s window and lets them expire first. Everything is deleted afterwards.

- Redis Cluster: on the local cluster of `make redis-cluster` (started when missing), holds
  per second with every hold on one sale on one shard against holds spread over three sales
  on three shards, in alternating rounds; holder processes (one per CPU) call the hold path
  in process, so the figure is the Redis side's (HTTP is measured above); each shard's
  redis-server CPU time is read from /proc.

The last line of stdout is JSON: poll_ratio, join_ratio, purchase_ratio, purchase_vs_rowlock,
drain_ratio, redis_bytes_per_waiter, cluster_ratio (and the raw figures; those of a second
server carry its name, e.g. `poll_rps@uvicorn`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from flashsale.cli import SERVERS
from flashsale.config import Settings
from flashsale.waiting_room.autopipeline import close_shared
from flashsale.waiting_room.db import connect_pool, migrate
from flashsale.waiting_room.purchase import PurchaseRefused
from flashsale.waiting_room.redis_client import connect_redis, node_of, primaries, remove_matching
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.scripts import source
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.stock import PERSISTER_GROUP, Stock
from flashsale.waiting_room.tokens import ADMISSION, Claims, Signer
from loadtest.apps import ROWLOCK_DDL
from loadtest.common import (
    cpu_seconds,
    drop_install,
    ensure_services,
    ensure_tool,
    free_port,
    install_env,
    log,
    pinned,
    processes,
    wait_port,
)

WRK_DIR = Path(__file__).resolve().parent / "wrk"
TARGETS = {  # name: (target, "min" | "max")
    "poll_ratio": (0.9, "min"),
    "join_ratio": (0.7, "min"),
    "purchase_ratio": (0.5, "min"),
    "purchase_vs_rowlock": (10.0, "min"),
    "drain_ratio": (3.0, "min"),
    "redis_bytes_per_waiter": (64.0, "max"),
}


@dataclass(frozen=True)
class Kind:
    name: str
    port: int
    script: str
    args: tuple[str, ...]
    pid: int = 0  # the server's process, for its CPU time per request


@dataclass(frozen=True)
class Run:
    kind: str
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_us: float | None = None  # CPU the server process spent per request
    redis_cpu_us: float | None = None  # ...and Redis (only its part on this machine's clock)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest.bench", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (median taken)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per kind, seconds")
    p.add_argument("--workers", type=int, default=1, help="worker processes of every server")
    p.add_argument(
        "--servers",
        default=SERVERS[0],
        help=f"HTTP servers to measure, comma-separated, the first one the headline "
        f"(of {', '.join(SERVERS)}; default {SERVERS[0]})",
    )
    p.add_argument(
        "--against",
        default="",
        help="another checkout of FlashSale to serve beside this one as `base` (its folder)",
    )
    p.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections")
    p.add_argument(
        "--waiters", type=int, default=1_000_000, help="visitors joined for the Redis memory figure"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to CPUs")
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: http,drain,memory,cluster"
    )
    return p.parse_args(argv)


# -- set-up ----------------------------------------------------------------------------------


def bench_settings(urls: dict[str, str]) -> Settings:
    run = f"{os.getpid()}{secrets.token_hex(2)}"
    return Settings.from_env(
        redis_url=urls["REDIS_URL"],
        database_url=urls["DATABASE_URL"],
        redis_prefix=f"bench{run}",
        database_schema=f"flashsale_bench_{run}",
        admin_token=secrets.token_urlsafe(24),
        token_key=secrets.token_urlsafe(32),
        token_key_previous="",
        join_limit_per_address=1_000_000_000,
    )


def sale_body(sale_id: str, opens: datetime, **extra: Any) -> dict[str, Any]:
    body = {
        "id": sale_id,
        "name": "benchmark",
        "stock": 10_000_000,
        "price_cents": 100,
        "opens_at": opens.isoformat(),
        "closes_at": (opens + timedelta(hours=2)).isoformat(),
        "per_shopper_limit": 100,
        "hold_seconds": 3600,
        "admission": {
            "batch_size": 100_000,
            "batch_interval_ms": 50,
            "max_active": 1_000_000,
            "admission_ttl_seconds": 86_400,
            "abandon_after_seconds": 3_600,
        },
    }
    body.update(extra)
    return body


async def gather_chunked(calls: list[Any], chunk: int = 50) -> list[Any]:
    out: list[Any] = []
    for first in range(0, len(calls), chunk):
        out += await asyncio.gather(*calls[first : first + chunk])
    return out


async def prepare(settings: Settings, data: Path, waiters: int, admitted: int) -> dict[str, Any]:
    """Schema, the rowlock tables, two open sales: one whose room holds `waiters` waiting
    shoppers (their tickets for the polls), one with `admitted` shoppers admitted (their
    admission tokens for the holds)."""
    await migrate(settings)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    pool = await connect_pool(settings, max_size=10)
    signer = Signer(settings.signing_keys())
    room = WaitingRoom(redis, replace(settings, status_cache_ms=60_000), signer)
    sales = Sales(pool, room)
    try:
        async with pool.acquire() as conn:
            await conn.execute(ROWLOCK_DDL)
            await conn.execute(
                "INSERT INTO rowlock_counter (sale_id, stock) VALUES ($1, $2)"
                " ON CONFLICT (sale_id) DO UPDATE SET stock = $2",
                "rowlock",
                100_000_000,
            )
        stamp = datetime.now(UTC).strftime("%H%M%S")
        opens = datetime.now(UTC) + timedelta(seconds=1.5)
        poll_sale = await sales.create(sale_body(f"bench-poll-{stamp}", opens))
        hold_sale = await sales.create(sale_body(f"bench-hold-{stamp}", opens))
        await asyncio.sleep(max(0.0, opens.timestamp() - time.time() + 0.2))
        tickets = []
        for joined in await gather_chunked(
            [room.join(poll_sale.id, f"poller-{n:07d}", "127.0.0.1") for n in range(waiters)]
        ):
            assert joined.outcome == "ok", joined
            tickets.append(joined.ticket)
        (data / "tickets.txt").write_text("\n".join(tickets) + "\n")
        visitors = [f"buyer-{n:07d}" for n in range(admitted)]
        for joined in await gather_chunked(
            [room.join(hold_sale.id, v, "127.0.0.1") for v in visitors]
        ):
            assert joined.outcome == "ok", joined
        for _ in range(100):
            result = await room.admit_once(hold_sale.id)
            if result.outcome == "idle":
                break
            if result.outcome == "wait":
                await asyncio.sleep(0.06)
        keys = room.keys(hold_sale.id)
        active = dict(await redis.zrange(keys.active, 0, -1, withscores=True))
        assert len(active) == admitted, f"admitted {len(active)} of {admitted}"
        index = {}
        for v in visitors:
            bucket = await redis.hget(keys.visitors(v), v)
            index[v] = int(bucket)
        tokens = [
            signer.sign(
                Claims(ADMISSION, hold_sale.id, v, index[v], exp=active[str(index[v])] / 1000)
            )
            for v in visitors
        ]
        (data / "tokens.txt").write_text("\n".join(tokens) + "\n")
        # the API prewarms on the first hold; doing it here keeps it out of the measurement
        await Stock(redis, redis, pool, room).prewarm(hold_sale)
        return {"poll_sale": poll_sale.id, "hold_sale": hold_sale.id}
    finally:
        await close_shared()
        await pool.close()
        await redis.aclose()


def serving_process(pid: int) -> int:
    """The process that answers: the server's own (uvicorn with one worker), or its only
    child (granian runs its worker in a child process)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def redis_process(settings: Settings) -> int:
    """The Redis server's pid when it runs on this machine (its CPU per request is shown)."""

    async def read() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            info = await redis.info("server")
        finally:
            await redis.aclose()
        return int(info.get("process_id") or 0)

    pid = asyncio.run(read())
    return pid if pid and cpu_seconds(pid) is not None else 0


async def drop(settings: Settings) -> None:
    await drop_install(settings)


# -- HTTP rounds -----------------------------------------------------------------------------


def wrk_script(data: Path, name: str) -> str:
    path = data / f"{name}.lua"
    if not path.exists():
        path.write_text(
            (WRK_DIR / "common.lua").read_text() + "\n" + (WRK_DIR / f"{name}.lua").read_text()
        )
    return str(path)


def run_wrk(
    wrk: str,
    kind: Kind,
    data: Path,
    seconds: float,
    connections: int,
    cpus: str | None,
    redis_pid: int = 0,
) -> Run:
    argv = pinned(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            wrk_script(data, kind.script),
            f"http://127.0.0.1:{kind.port}",
            "--",
            *kind.args,
        ],
        cpus,
    )
    before = [
        cpu_seconds(kind.pid) if kind.pid else None,
        cpu_seconds(redis_pid) if redis_pid else None,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = [
        cpu_seconds(kind.pid) if kind.pid else None,
        cpu_seconds(redis_pid) if redis_pid else None,
    ]
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary for {kind.name}: {out.stdout}{out.stderr}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    errors = (
        s["connect_errors"]
        + s["read_errors"]
        + s["write_errors"]
        + s["status_errors"]
        + s["timeouts"]
    )
    per_request = [
        None if b is None or a is None or not s["requests"] else (a - b) / s["requests"] * 1e6
        for b, a in zip(before, after, strict=True)
    ]
    return Run(
        kind.name,
        s["requests"] / (s["duration_us"] / 1e6),
        s["requests"],
        errors,
        s["p50_us"] / 1000,
        s["p99_us"] / 1000,
        *per_request,
    )


def http_rounds(
    args: argparse.Namespace, wrk: str, kinds: list[Kind], data: Path, redis_pid: int
) -> dict[str, list[Run]]:
    cpus = None if args.no_pin else "0"
    for kind in kinds:  # warm-up: caches, JIT-less but lazy imports, connections, pools
        run = run_wrk(wrk, kind, data, args.warmup, args.connections, cpus, redis_pid)
        log(f"  warm-up {kind.name:8s} {run.rps:8.0f} req/s")
    runs: dict[str, list[Run]] = {k.name: [] for k in kinds}
    for r in range(args.rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            run = run_wrk(wrk, kind, data, args.seconds, args.connections, cpus, redis_pid)
            runs[kind.name].append(run)
            flag = f"  ({run.errors} errors!)" if run.errors else ""
            log(
                f"  round {r + 1} {kind.name:8s} {run.rps:8.0f} req/s  p50 {run.p50_ms:6.1f} ms"
                f"  p99 {run.p99_ms:6.1f} ms  CPU/request: server {_us(run.server_cpu_us)}, "
                f"Redis {_us(run.redis_cpu_us)}{flag}"
            )
    return runs


def _us(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} µs"


def median_ratio(runs: dict[str, list[Run]], top: str, bottom: str) -> float:
    return statistics.median(a.rps / b.rps for a, b in zip(runs[top], runs[bottom], strict=True))


# -- persister drain -------------------------------------------------------------------------


async def drain_rate(settings: Settings, sale_id: str, start_persister: Any) -> dict[str, Any]:
    """Start a persister on a stream full of holds; entries per second from its first
    acknowledged batch until nothing is unread or pending."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    stream = (
        WaitingRoom(redis, settings, Signer(settings.signing_keys())).keys(sale_id).orders_stream
    )
    try:
        total = await redis.xlen(stream)
        start_persister()
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            left = total
            with contextlib.suppress(Exception):
                for group in await redis.xinfo_groups(stream):
                    if group["name"] == PERSISTER_GROUP:
                        left = int(group.get("lag") or 0) + int(group["pending"])
            now = time.monotonic()
            if first is None and left < total:
                first = (now, left)
            if first is not None and left == 0:
                spent = now - first[0]
                rate = first[1] / spent if spent > 0 else float("inf")
                return {"entries": total, "rate": rate, "seconds": spent}
            await asyncio.sleep(0.02)
        raise RuntimeError("the persister did not drain the stream within 600 s")
    finally:
        await redis.aclose()


# -- Redis memory ----------------------------------------------------------------------------


async def redis_memory(settings: Settings, waiters: int) -> dict[str, Any]:
    """Bytes of Redis per waiting visitor with `waiters` in one sale's pre-queue."""
    prefix = f"benchmem{os.getpid()}{secrets.token_hex(2)}"
    mem_settings = replace(settings, redis_prefix=prefix)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    pool = await connect_pool(settings, max_size=2)
    room = WaitingRoom(redis, mem_settings, Signer(settings.signing_keys()))
    try:
        opens = datetime.now(UTC) + timedelta(hours=1)
        sale = await Sales(pool, room).create(
            sale_body(
                f"bench-mem-{datetime.now(UTC):%H%M%S}",
                opens,
                admission={"abandon_after_seconds": 60},
            )
        )
        keys = room.keys(sale.id)
        view = await room.view(sale.id, fresh=True)
        before = (await redis.info("memory"))["used_memory"]
        join_sha = await redis.script_load(source("join"))
        window_ms = 2000
        started = time.monotonic()
        batch = 2000
        for first in range(0, waiters, batch):
            async with redis.pipeline(transaction=False) as pipe:
                now = int(time.time() * 1000)
                current = now // max(1, view.abandon_ms // 4)
                for n in range(first, min(first + batch, waiters)):
                    visitor = secrets.token_urlsafe(16)  # what the API issues
                    address = f"198.18.{n // 250 % 250}.{n % 250}"
                    pipe.evalsha(
                        join_sha,
                        6,
                        keys.meta,
                        keys.visitors(visitor),
                        keys.heartbeat(current),
                        keys.rate("v", visitor),
                        keys.rate("a", address),
                        keys.inventory,
                        visitor,
                        now,
                        3 * 60_000,
                        window_ms,
                        10,
                        1_000_000,
                    )
                results = await pipe.execute()
            bad = [r for r in results if r[0] != "ok"]
            if bad:
                raise RuntimeError(f"joins refused: {bad[:3]}")
            if first and first % 100_000 == 0:
                log(f"  {first} joined ({first / (time.monotonic() - started):.0f}/s)")
        joined = await redis.hget(keys.meta, "pre")
        await asyncio.sleep(window_ms / 1000 + 0.5)
        # a full SCAN expires the rate-limit counters Redis has not yet evicted by itself
        sizes: dict[str, int] = {}
        rate_keys = 0
        async for key in redis.scan_iter(match=keys.pattern, count=5000):
            if ":rl:" in key:
                rate_keys += 1
                continue
            sizes[key] = 0
        names = list(sizes)
        for first in range(0, len(names), 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for key in names[first : first + 1000]:
                    pipe.memory_usage(key, samples=0)
                for key, size in zip(
                    names[first : first + 1000], await pipe.execute(), strict=True
                ):
                    sizes[key] = int(size or 0)
        after = (await redis.info("memory"))["used_memory"]
        total = sum(sizes.values())
        buckets = sum(v for k, v in sizes.items() if ":v:" in k)
        encodings = {await redis.object("encoding", k) for k in names[:50] if ":v:" in k}
        return {
            "waiters": int(joined or 0),
            "keys": len(sizes),
            "bytes": total,
            "per_waiter": total / max(1, int(joined or 0)),
            "visitor_index_per_waiter": buckets / max(1, int(joined or 0)),
            "info_delta_per_waiter": (after - before) / max(1, int(joined or 0)),
            "rate_limit_keys_left": rate_keys,
            "bucket_encodings": sorted(encodings),
            "join_rate": waiters / (time.monotonic() - started),
        }
    finally:
        await remove_matching(redis, f"{prefix}:*")
        await close_shared()
        await pool.close()
        await redis.aclose()


# -- Redis Cluster: holds on three shards against one ---------------------------------------

CLUSTER_DIR = Path(__file__).resolve().parent.parent / ".run" / "redis-cluster"
CLUSTER_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "redis-cluster.sh"
CLUSTER_SHOPPERS = 12_000  # per sale; 100 holds each at most (the per-shopper limit): 1.2 M holds
CLUSTER_CONCURRENCY = 64  # holds in flight per holder process


def start_cluster() -> tuple[str, list[int]]:
    """The local cluster of `make redis-cluster` (started when it is not running): its URL
    and the pids of its redis-servers."""
    if ensure_tool("redis-server", "redis-server") is None:
        raise RuntimeError("redis-server is needed for the cluster figure")
    out = subprocess.run(
        [str(CLUSTER_SCRIPT), "start", str(CLUSTER_DIR)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    url = out.strip().rsplit("REDIS_CLUSTER_URL=", 1)[1]
    pids = [int(p.read_text()) for p in sorted(CLUSTER_DIR.glob("*.pid"))]
    return url, pids


async def prepare_cluster(settings: Settings) -> dict[str, Any]:
    """Four open sales on the cluster: `one` on the first primary, `three` on each primary;
    CLUSTER_SHOPPERS admitted shoppers in each (their admission claims), stock warm."""
    redis = connect_redis(settings, cluster=True)
    pool = await connect_pool(settings, max_size=4)
    room = WaitingRoom(
        redis, replace(settings, status_cache_ms=60_000), Signer(settings.signing_keys())
    )
    sales = Sales(pool, room)
    try:
        nodes = await primaries(redis)
        opens = datetime.now(UTC) + timedelta(seconds=1.5)
        stamp = datetime.now(UTC).strftime("%H%M%S")
        wanted = {"one": nodes[0], "three-0": nodes[0], "three-1": nodes[1], "three-2": nodes[2]}
        made: dict[str, str] = {}
        for name, node in wanted.items():
            while True:
                sale_id = f"bench-{name}-{stamp}-{secrets.token_hex(2)}"
                if await node_of(redis, room.keys(sale_id).meta) == node:
                    break
            await sales.create(sale_body(sale_id, opens))
            made[name] = sale_id
        await asyncio.sleep(max(0.0, opens.timestamp() - time.time() + 0.2))
        claims: dict[str, list[Claims]] = {}
        stock = Stock(redis, redis, pool, room)
        for sale_id in made.values():
            visitors = [f"holder-{n:06d}" for n in range(CLUSTER_SHOPPERS)]
            joined = await gather_chunked(
                [room.join(sale_id, v, "127.0.0.1") for v in visitors], chunk=200
            )
            for _ in range(100):
                result = await room.admit_once(sale_id)
                if result.outcome == "idle":
                    break
                if result.outcome == "wait":
                    await asyncio.sleep(0.06)
            active = dict(await redis.zrange(room.keys(sale_id).active, 0, -1, withscores=True))
            claims[sale_id] = [
                Claims(
                    ADMISSION, sale_id, v, j.claims.index, exp=active[str(j.claims.index)] / 1000
                )
                for v, j in zip(visitors, joined, strict=True)
            ]
            await stock.prewarm(await sales.get(sale_id))
        return {"sales": made, "claims": claims, "nodes": nodes}
    finally:
        await close_shared()
        await pool.close()
        await redis.aclose()


def _holder(
    settings: Settings, claims: list[Claims], start_at: float, stop_at: float
) -> tuple[int, int]:
    """One holder process: holds (round robin over the sales of `claims`) from `start_at`
    to `stop_at`; how many were made, and how many refused."""
    return asyncio.run(_holding(settings, claims, start_at, stop_at))


async def _holding(
    settings: Settings, claims: list[Claims], start_at: float, stop_at: float
) -> tuple[int, int]:
    redis = connect_redis(settings, cluster=True)
    raw = connect_redis(settings, cluster=True, decode=False)
    pool = await connect_pool(settings, max_size=2)
    services = Services.build(settings, redis, raw, pool)
    try:
        sales = {sale_id: await services.sales.get(sale_id) for sale_id in {c.sale for c in claims}}
        for sale_id in sales:  # connections open and scripts loaded before the clock starts
            first = next(c for c in claims if c.sale == sale_id)
            with contextlib.suppress(PurchaseRefused):  # a shopper at the limit: loaded anyway
                await services.purchases.hold(sales[sale_id], first, quantity=1)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        made = refused = 0

        async def shopper(n: int) -> None:
            nonlocal made, refused
            while time.time() < stop_at:
                c = claims[n % len(claims)]
                n += CLUSTER_CONCURRENCY
                try:
                    await services.purchases.hold(sales[c.sale], c, quantity=1)
                    made += 1
                except PurchaseRefused:
                    refused += 1

        await asyncio.gather(*(shopper(n) for n in range(CLUSTER_CONCURRENCY)))
        return made, refused
    finally:
        await close_shared()
        await pool.close()
        await redis.aclose()
        await raw.aclose()


def cluster_figure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Holds per second with every hold on one sale on one shard, against holds spread over
    three sales on three shards, in alternating rounds of `args.seconds` (the ratio of each
    round, the median reported). Holder processes (one per CPU) call the hold path in process
    (Purchases.hold over the auto-pipeline), so the figure is the Redis side's, not HTTP's;
    each shard's redis-server CPU time says how the load spread."""
    url, pids = start_cluster()
    on = replace(settings, redis_url=url, redis_cluster="true")
    prepared = asyncio.run(prepare_cluster(on))
    sales, claims = prepared["sales"], prepared["claims"]
    layouts = {
        "one": claims[sales["one"]],
        "three": [
            c
            for trio in zip(*(claims[sales[f"three-{n}"]] for n in range(3)), strict=True)
            for c in trio
        ],
    }
    workers = max(1, os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    rates: dict[str, list[float]] = {"one": [], "three": []}
    busiest: dict[str, list[float]] = {"one": [], "three": []}
    per_hold: list[float] = []  # µs of redis-server CPU (all shards) per hold
    refused = 0
    try:
        with context.Pool(workers) as holders:
            for r in range(args.rounds):
                for layout in ("one", "three") if r % 2 == 0 else ("three", "one"):
                    mine = layouts[layout]
                    slices = [mine[w::workers] for w in range(workers)]
                    start_at = time.time() + 3.0  # the holders connect and warm up first
                    stop_at = start_at + args.seconds
                    pending = holders.starmap_async(
                        _holder, [(on, s, start_at, stop_at) for s in slices]
                    )
                    time.sleep(max(0.0, start_at - time.time()))
                    before = [cpu_seconds(pid) or 0.0 for pid in pids]
                    time.sleep(args.seconds)
                    after = [cpu_seconds(pid) or 0.0 for pid in pids]
                    counts = pending.get(timeout=args.seconds + 120)
                    made = sum(c[0] for c in counts)  # the warm-up holds are not counted
                    refused += sum(c[1] for c in counts)
                    rate = made / args.seconds
                    share = max(a - b for a, b in zip(after, before, strict=True)) / args.seconds
                    rates[layout].append(rate)
                    busiest[layout].append(share)
                    spent = sum(after) - sum(before)
                    per_hold.append(spent / max(1, made) * 1e6)
                    log(
                        f"  round {r + 1} cluster {layout:5s} {rate:8.0f} holds/s  busiest "
                        f"redis-server {share * 100:.0f}% of a CPU"
                    )
    finally:
        asyncio.run(drop_cluster(on))
    ratios = [t / o for t, o in zip(rates["three"], rates["one"], strict=True)]
    return {
        "cluster_one_shard_hps": round(statistics.median(rates["one"])),
        "cluster_three_shards_hps": round(statistics.median(rates["three"])),
        "cluster_ratio": round(statistics.median(ratios), 2),
        "cluster_busiest_shard_cpu_one": round(statistics.median(busiest["one"]), 2),
        "cluster_busiest_shard_cpu_three": round(statistics.median(busiest["three"]), 2),
        "cluster_redis_us_per_hold": round(statistics.median(per_hold), 1),
        "cluster_refused": refused,
        "cluster_holder_processes": workers,
    }


async def drop_cluster(settings: Settings) -> None:
    """The run's keys on the cluster (its sales stay in the run's schema, dropped with it)."""
    redis = connect_redis(settings, cluster=True)
    try:
        await remove_matching(redis, f"{settings.redis_prefix}:*")
    finally:
        await redis.aclose()


@dataclass(frozen=True)
class Target:
    """What serves one set of kinds: a label (`uvicorn`, `granian`, `base`), the HTTP server,
    and the checkout whose code it runs (None: this one)."""

    label: str
    server: str
    tree: Path | None = None


def targets_of(args: argparse.Namespace) -> list[Target]:
    servers = [x for x in args.servers.split(",") if x]
    targets = [Target(server, server) for server in servers]
    if args.against:
        targets.append(Target("base", servers[0], Path(args.against).resolve()))
    return targets


def describe(tree: Path) -> str:
    """The commit a checkout is at (its folder when git cannot tell)."""
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or str(tree)


def start_servers(
    args: argparse.Namespace,
    targets: list[Target],
    sales: dict[str, Any],
    data: Path,
    procs: Any,
    env: dict[str, str],
) -> tuple[list[Kind], list[str]]:
    """Start the bare endpoint and FlashSale for each target, and the row-lock purchase
    under the first; the kinds of request to measure, and the names of the processes."""
    server_cpus = None if args.no_pin else str((os.cpu_count() or 1) - 1)
    poll, hold = sales["poll_sale"], sales["hold_sale"]
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    apps = [(t, app) for t in targets for app in ("loadtest.apps:bare", "flashsale")]
    apps.append((targets[0], "loadtest.apps:rowlock"))
    for target, app in apps:
        name = f"{app.rsplit(':', 1)[-1]}@{target.label}"
        port = ports[name] = free_port()
        argv = [sys.executable, "-m", "loadtest.serve", app]
        if target.tree is None:  # another checkout's serve.py may not know --server
            argv += ["--server", target.server]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
        if target.tree is None:
            pids[name] = procs.start(name, pinned(argv, server_cpus), env).pid
        else:
            tree = str(target.tree)
            own = {**env, "PYTHONPATH": os.pathsep.join([tree, env.get("PYTHONPATH", "")])}
            pids[name] = procs.start(name, pinned(argv, server_cpus), own, target.tree).pid
    for port in ports.values():
        wait_port(port, 60, procs)
    time.sleep(1)  # granian's worker starts after its port is bound
    if args.workers > 1:  # the workers are the master's children: not measured
        pids = dict.fromkeys(pids, 0)
    else:
        pids = {name: serving_process(pid) for name, pid in pids.items()}
    kinds = []
    for target in targets:
        at = "" if target is targets[0] else f"@{target.label}"
        bare, fs = f"bare@{target.label}", f"flashsale@{target.label}"
        kinds += [
            Kind(f"bare{at}", ports[bare], "bare", ("/",), pids[bare]),
            Kind(
                f"poll{at}",
                ports[fs],
                "status",
                (f"/api/sales/{poll}/status", str(data / "tickets.txt")),
                pids[fs],
            ),
            Kind(f"join{at}", ports[fs], "join", (f"/api/sales/{poll}/join",), pids[fs]),
            Kind(
                f"hold{at}",
                ports[fs],
                "hold",
                (f"/api/sales/{hold}/holds", str(data / "tokens.txt")),
                pids[fs],
            ),
        ]
    rowlock = f"rowlock@{targets[0].label}"
    kinds.append(
        Kind("rowlock", ports[rowlock], "rowlock", ("/rowlock/rowlock/purchase",), pids[rowlock])
    )
    return kinds, list(ports)


# -- the run ---------------------------------------------------------------------------------


def verdict(name: str, value: float | None) -> str:
    target, sense = TARGETS[name]
    if value is None:
        return "not measured"
    ok = value >= target if sense == "min" else value <= target
    return f"{'met' if ok else 'MISSED'} (target {'>=' if sense == 'min' else '<='} {target:g})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    urls = ensure_services()
    wrk = ensure_tool("wrk", "wrk") if "http" not in skip else None
    if "http" not in skip and wrk is None:
        print(json.dumps({"ok": False, "error": "wrk is not installed"}))
        return 1
    settings = bench_settings(urls)
    server_cpus = None if args.no_pin else str((os.cpu_count() or 1) - 1)
    figures: dict[str, Any] = {}
    log(
        f"bench: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; servers "
        f"{'on CPU ' + server_cpus if server_cpus else 'unpinned'} ({args.servers}"
        f"{', and base ' + args.against if args.against else ''}), "
        f"{args.workers} worker(s) each; wrk -t1 -c{args.connections}; {args.rounds} rounds of "
        f"{args.seconds:g} s"
    )
    with (
        tempfile.TemporaryDirectory(prefix="flashsale-bench-") as tmp,
        processes(Path(tmp) / "logs") as procs,
    ):
        data = Path(tmp)
        try:
            env = install_env(
                urls,
                settings,
                **{
                    "FLASHSALE_JOIN_LIMIT_PER_ADDRESS": "1000000000",
                    "FLASHSALE_ADMITTER_REFRESH_SECONDS": "0.2",
                },
            )
            # each target holds 3000 shoppers' worth (100 units each) from the one sale
            admitted = 3000 * (len(targets_of(args)) if "http" not in skip else 1)
            sales = asyncio.run(prepare(settings, data, waiters=5000, admitted=admitted))
            if "http" not in skip:
                assert wrk is not None
                targets = targets_of(args)
                kinds, names = start_servers(args, targets, sales, data, procs, env)
                runs = http_rounds(args, wrk, kinds, data, redis_process(settings))
                procs.stop(*names)
                for name, rs in runs.items():
                    figures[f"{name}_rps"] = round(statistics.median(r.rps for r in rs))
                    for part in ("server", "redis"):
                        used = [u for r in rs if (u := getattr(r, f"{part}_cpu_us")) is not None]
                        figures[f"{name}_{part}_cpu_us"] = (
                            round(statistics.median(used)) if used else None
                        )
                    figures[f"{name}_p99_ms"] = round(statistics.median(r.p99_ms for r in rs), 1)
                    figures[f"{name}_errors"] = sum(r.errors for r in rs)
                labels = [t.label for t in targets]
                for label in labels:
                    at = "" if label == labels[0] else f"@{label}"
                    bare = f"bare{at}"
                    figures[f"poll_ratio{at}"] = round(median_ratio(runs, f"poll{at}", bare), 3)
                    figures[f"join_ratio{at}"] = round(median_ratio(runs, f"join{at}", bare), 3)
                    figures[f"purchase_ratio{at}"] = round(median_ratio(runs, f"hold{at}", bare), 3)
                    figures[f"purchase_vs_rowlock{at}"] = round(
                        median_ratio(runs, f"hold{at}", "rowlock"), 2
                    )
                figures["servers"] = labels
                if args.against:
                    figures["against"] = describe(Path(args.against))
                hold = sales["hold_sale"]
                if "drain" not in skip:
                    log("bench: persister drain")
                    drained = asyncio.run(
                        drain_rate(
                            settings,
                            hold,
                            lambda: procs.start(
                                "persister",
                                [sys.executable, "-m", "flashsale.cli", "persister"],
                                env,
                            ),
                        )
                    )
                    procs.stop("persister")
                    figures["drain_entries"] = drained["entries"]
                    figures["drain_rate"] = round(drained["rate"])
                    figures["drain_ratio"] = round(drained["rate"] / figures["hold_rps"], 2)
            if "memory" not in skip:
                log(f"bench: Redis memory with {args.waiters} waiting")
                memory = asyncio.run(redis_memory(settings, args.waiters))
                figures["redis_bytes_per_waiter"] = round(memory["per_waiter"], 1)
                figures["redis_info_delta_per_waiter"] = round(memory["info_delta_per_waiter"], 1)
                figures["redis_waiters"] = memory["waiters"]
                figures["redis_bucket_encodings"] = memory["bucket_encodings"]
            if "cluster" not in skip:
                log("bench: Redis Cluster, holds on one shard and on three")
                figures.update(cluster_figure(settings, args))
        finally:
            procs.stop()
            asyncio.run(drop(settings))
    lines = [
        "",
        f"FlashSale benchmark ({args.rounds} rounds of {args.seconds:g} s, medians; "
        f"{args.servers}, {args.workers} worker(s), wrk -c{args.connections})",
    ]
    if "bare_rps" in figures:
        lines += [
            f"  bare Starlette endpoint     {figures['bare_rps']:>8} req/s",
            f"  status poll                 {figures['poll_rps']:>8} req/s   ratio "
            f"{figures['poll_ratio']:.3f}  {verdict('poll_ratio', figures['poll_ratio'])}",
            f"  join                        {figures['join_rps']:>8} req/s   ratio "
            f"{figures['join_ratio']:.3f}  {verdict('join_ratio', figures['join_ratio'])}",
            f"  purchase (hold)             {figures['hold_rps']:>8} req/s   ratio "
            f"{figures['purchase_ratio']:.3f}  "
            f"{verdict('purchase_ratio', figures['purchase_ratio'])}",
            f"  row-lock purchase (PG)      {figures['rowlock_rps']:>8} req/s   hold / "
            f"row-lock {figures['purchase_vs_rowlock']:.2f}  "
            f"{verdict('purchase_vs_rowlock', figures['purchase_vs_rowlock'])}",
            "  CPU per request (server process; Redis):  "
            + ",  ".join(
                f"{name} {_us(figures.get(f'{name}_server_cpu_us'))}"
                + (
                    f"; {_us(figures.get(f'{name}_redis_cpu_us'))}"
                    if name in ("poll", "join", "hold")
                    else ""
                )
                for name in ("bare", "poll", "join", "hold", "rowlock")
            ),
        ]
        for server in figures["servers"][1:]:
            where = f"base {figures['against']}" if server == "base" else f"under {server}"
            lines.append(
                f"  {where}: bare {figures[f'bare@{server}_rps']} req/s, "
                + ", ".join(
                    f"{kind} {figures[f'{kind}@{server}_rps']} req/s "
                    f"(ratio {figures[f'{ratio}@{server}']:.3f})"
                    for kind, ratio in (
                        ("poll", "poll_ratio"),
                        ("join", "join_ratio"),
                        ("hold", "purchase_ratio"),
                    )
                )
                + f", hold / row-lock {figures[f'purchase_vs_rowlock@{server}']:.2f}"
                + "; CPU per request: "
                + ", ".join(
                    f"{kind} {_us(figures.get(f'{kind}@{server}_server_cpu_us'))}"
                    for kind in ("bare", "poll", "join", "hold")
                )
            )
    if "drain_rate" in figures:
        lines.append(
            f"  persister drain             {figures['drain_rate']:>8} entries/s "
            f"drain / hold {figures['drain_ratio']:.2f}  "
            f"{verdict('drain_ratio', figures['drain_ratio'])}"
        )
    if "redis_bytes_per_waiter" in figures:
        lines.append(
            f"  Redis per waiting visitor   {figures['redis_bytes_per_waiter']:>8} bytes "
            f"(INFO delta {figures['redis_info_delta_per_waiter']}) with "
            f"{figures['redis_waiters']} waiting  "
            f"{verdict('redis_bytes_per_waiter', figures['redis_bytes_per_waiter'])}"
        )
    if "cluster_ratio" in figures:
        lines.append(
            f"  Redis Cluster holds         {figures['cluster_one_shard_hps']:>8} /s on one shard,"
            f" {figures['cluster_three_shards_hps']} /s on three: ratio "
            f"{figures['cluster_ratio']:.2f} (busiest redis-server "
            f"{figures['cluster_busiest_shard_cpu_one'] * 100:.0f}% then "
            f"{figures['cluster_busiest_shard_cpu_three'] * 100:.0f}% of a CPU, "
            f"{figures['cluster_redis_us_per_hold']} µs of Redis CPU a hold; "
            f"{figures['cluster_holder_processes']} holder processes)"
        )
    figures["seconds"] = round(time.time() - started, 1)
    lines.append(f"  ({figures['seconds']} s in all)")
    print("\n".join(lines))
    out = {k: figures.get(k) for k in TARGETS}
    out["targets_met"] = all(
        figures.get(k) is not None and (figures[k] >= t if s == "min" else figures[k] <= t)
        for k, (t, s) in TARGETS.items()
    )
    out.update({k: v for k, v in figures.items() if k not in out})
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
