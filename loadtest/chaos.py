"""`make chaos` (`python -m loadtest.chaos`): faults during flash sales, then proof that nothing
went wrong.

The run starts a Redis and a PostgreSQL of its own (`harness/servers.py`: free ports, data in
a folder of /tmp, so it can kill and stall them without touching any other server), two API
processes (`flashsale api --workers 1`; the second in a network namespace of its own when one
can be made, see `harness/netns.py`) behind HAProxy, an admitter and a persister. For each
fault of the schedule it creates a sale, sends a few hundred simulated shoppers that retry
like real clients (a hold is sent again with the same Idempotency-Key, a 503 waits out its
Retry-After), strikes during the sale, heals, lets the sale settle (unpaid holds expire, the
persister drains; after a Redis that lost everything, `flashsale reconcile --repair` brings
the sale back from PostgreSQL, as an operator would) and checks from PostgreSQL and Redis
(`harness/invariants.py`): nothing oversold, no seat twice, every purchase a shopper saw
confirmed is exactly one confirmed order with its quantity, no order left in a state that is
not final, the stream drained and its dead letters explained, reconcile clean. It measures
the time until the service answered again (/readyz through HAProxy, every 0.25 s) and the
5xx (and answers that never came) during and after the fault.

It writes `reports/chaos-<timestamp>/` (report.md with a table per fault, a plot over time per
fault, result.json, every process's log) and ends stdout with one JSON line:
{"invariants_ok", "faults", "oversold", "lost_confirmed", "duplicated", "stuck",
"recovery_s_max", ...}. Progress goes to stderr. `--faults a,b` runs some of the schedule
(`--list` names them); tests/system/test_chaos.py runs a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis as SyncRedis

from flashsale.config import Settings
from flashsale.waiting_room.db import migrate
from loadtest.harness import haproxy as ingress
from loadtest.harness import store
from loadtest.harness.crowd import (
    Crowd,
    Plan,
    create_sale,
    opened,
    plan_shoppers,
    progress,
    release,
    runner,
    settle,
    shop,
    watch_room,
)
from loadtest.harness.invariants import Verdict, judge
from loadtest.harness.netns import Namespace, open_namespace, why_not
from loadtest.harness.processes import (
    FAST_ROLES,
    FLASHSALE,
    ROOT,
    Procs,
    ensure_tool,
    free_port,
    install_env,
    log,
    processes,
    wait_ready,
)
from loadtest.harness.report import final_line, line_plot, markdown_table, per_second
from loadtest.harness.servers import PrivatePostgres, PrivateRedis

# the crowd of each fault's sale: more demand than stock, so it sells out while the fault
# strikes; clients that keep retrying through an outage (about a minute), as apps do
PLAN = Plan(
    stock=120,
    lead_seconds=2.0,
    after_open_seconds=6.0,
    batch_size=40,
    batch_interval_ms=300,
    max_active=120,
    admission_ttl_seconds=20,
    abandon_after_seconds=8,
    prequeue_share=0.3,
    abandon_share=0.0,
    no_show_share=0.02,
    hard_timeout_seconds=100.0,
    drain_seconds=10.0,
    settle_seconds=60.0,
    in_flight=24,
    lost_answer_share=0.05,
    retries=60,
    retry_cap_seconds=1.0,
    rejoin=True,
    name="FlashSale chaos",
)
STRIKE_AFTER_OPENING_S = 2.5  # the fault strikes this long after the sale opens
PROBE_EVERY_S = 0.25


# -- the system under test -------------------------------------------------------------------


@dataclass
class Rig:
    """Everything the run started: the servers, the roles, HAProxy, and how to reach them."""

    procs: Procs
    redis: PrivateRedis
    postgres: PrivatePostgres
    namespace: Namespace | None
    settings: Settings  # as the harness reaches the servers (127.0.0.1)
    env: dict[str, str]  # the roles' environment
    api_ports: list[int]
    internal: int  # HAProxy's in-cluster entry: admin API, probes, and the crowd
    public: int
    notes: list[str] = field(default_factory=list)

    def api_argv(self, n: int) -> list[str]:
        host = self.namespace.inside if n == 2 and self.namespace else "127.0.0.1"
        argv = [*FLASHSALE, "api", "--workers", "1", "--host", host]
        argv += ["--port", str(self.api_ports[n - 1])]
        return self.namespace.run(argv) if n == 2 and self.namespace else argv

    def api_env(self, n: int) -> dict[str, str]:
        if n == 2 and self.namespace:  # inside the namespace, through its two pairs
            return {
                **self.env,
                "REDIS_URL": self.redis.url(self.namespace.host_redis),
                "DATABASE_URL": self.postgres.url(self.namespace.host_app),
            }
        return self.env

    def start_api(self, n: int) -> None:
        self.procs.start(f"api{n}", self.api_argv(n), self.api_env(n))

    def wait_api(self, n: int, within: float = 60) -> None:
        host = self.namespace.inside if n == 2 and self.namespace else "127.0.0.1"
        wait_ready(f"http://{host}:{self.api_ports[n - 1]}/readyz", within, self.procs)

    def start_role(self, name: str, role: str) -> None:
        self.procs.start(name, [*FLASHSALE, role], self.env)

    def restart(self, name: str) -> None:
        self.procs.restart(name)
        if name.startswith("api"):
            self.wait_api(int(name[3:]))


@contextlib.contextmanager
def rig(folder: Path, partition: bool) -> Iterator[Rig]:
    """Start the servers, the roles and HAProxy; always stop and remove them."""
    data = Path(tempfile.mkdtemp(prefix="fs-chaos-"))  # reachable by the postgres user
    os.chmod(data, 0o755)
    haproxy = ensure_tool("haproxy", "haproxy")
    if haproxy is None:
        raise RuntimeError("haproxy is not installed (Debian package haproxy)")
    notes = []
    reason = why_not() if partition else "not asked for (--no-partition)"
    namespace_cm: contextlib.AbstractContextManager[Namespace | None] = (
        contextlib.nullcontext(None) if reason else open_namespace(str(os.getpid() % 10000))
    )
    if reason:
        notes.append(f"no network partition: {reason}")
    try:
        with namespace_cm as namespace, processes(folder / "logs") as procs:
            also_redis = [namespace.host_redis] if namespace else []
            also_pg = [namespace.host_app] if namespace else []
            redis_server = PrivateRedis(procs, data / "redis", also_redis)
            redis_server.start(aof=True)
            postgres = PrivatePostgres(procs, data / "postgres", also_pg)
            postgres.init()
            settings = Settings.from_env(
                redis_url=redis_server.url(),
                database_url=postgres.url(),
                redis_prefix="chaos",
                database_schema="chaos",
                admin_token=secrets.token_urlsafe(24),
                token_key=secrets.token_urlsafe(32),
                token_key_previous="",
            )
            asyncio.run(migrate(settings))
            env = install_env(
                {}, settings, **FAST_ROLES, FLASHSALE_JOIN_LIMIT_PER_ADDRESS="10000000"
            )
            the_rig = Rig(
                procs,
                redis_server,
                postgres,
                namespace,
                settings,
                env,
                [free_port(), free_port()],
                free_port(),
                free_port(),
                notes,
            )
            cfg = folder / "haproxy.cfg"
            api2_host = namespace.inside if namespace else "127.0.0.1"
            cfg.write_text(
                ingress.render(
                    data,
                    the_rig.public,
                    the_rig.internal,
                    [("127.0.0.1", the_rig.api_ports[0]), (api2_host, the_rig.api_ports[1])],
                    rate_requests=10_000_000,
                )
            )
            problem = ingress.config_problem(haproxy, cfg)
            if problem:
                raise RuntimeError(f"haproxy refused {cfg}: {problem}")
            for n in (1, 2):
                the_rig.start_api(n)
            the_rig.start_role("admitter", "admitter")
            the_rig.start_role("persister", "persister")
            procs.start("haproxy", [haproxy, "-db", "-f", str(cfg)], env)
            for n in (1, 2):
                the_rig.wait_api(n)
            wait_ready(f"http://127.0.0.1:{the_rig.internal}/readyz", 30, procs)
            yield the_rig
    finally:
        shutil.rmtree(data, ignore_errors=True)


# -- the faults ------------------------------------------------------------------------------

Action = Callable[[Rig], None]


@dataclass(frozen=True)
class Fault:
    """A fault: what it does at which second after it strikes (the last step heals), and what
    the run must set up before the sale and undo after it."""

    name: str
    what: str
    steps: tuple[tuple[float, str, Action], ...]
    before: Action | None = None
    after: Action | None = None
    redis_lost: bool = False  # Redis forgot everything: the sale is repaired from PostgreSQL

    @property
    def seconds(self) -> float:
        return self.steps[-1][0]


def _kill(name: str) -> Action:
    return lambda r: r.procs.kill(name)


def _restart(name: str) -> Action:
    return lambda r: r.restart(name)


def _pause(*names: str) -> Action:
    def act(r: Rig) -> None:
        for name in names:
            r.procs.signal(name, signal.SIGSTOP)

    return act


def _resume(name: str) -> Action:
    return lambda r: r.procs.signal(name, signal.SIGCONT)


def _start(name: str, role: str) -> Action:
    return lambda r: r.start_role(name, role)


def _stop(name: str) -> Action:
    return lambda r: r.procs.stop(name)


def _both(*actions: Action) -> Action:
    def act(r: Rig) -> None:
        for a in actions:
            a(r)

    return act


def _redis_aof_again(r: Rig) -> None:
    """Turn persistence back on for the faults that follow."""
    client = SyncRedis.from_url(r.redis.url())
    try:
        client.config_set("appendonly", "yes")
    finally:
        client.close()
    r.redis.aof = True


def schedule(postgres_down_s: float, stall_s: float) -> list[Fault]:
    """Every fault of a full run, in order."""
    return [
        Fault(
            "api-kill9",
            "kill -9 of one API process (restarted 3 s later)",
            ((0, "kill -9 api1", _kill("api1")), (3, "restart api1", _restart("api1"))),
        ),
        Fault(
            "admitter-kill9",
            "kill -9 of the admitter (restarted 3 s later)",
            (
                (0, "kill -9 admitter", _kill("admitter")),
                (3, "restart admitter", _restart("admitter")),
            ),
        ),
        Fault(
            "admitter-kill9-of-two",
            "kill -9 of one of two admitters (restarted 3 s later)",
            (
                (0, "kill -9 admitter", _kill("admitter")),
                (3, "restart admitter", _restart("admitter")),
            ),
            before=_start("admitter2", "admitter"),
            after=_stop("admitter2"),
        ),
        Fault(
            "persister-kill9-backlog",
            "the persister stalled 5 s (a backlog builds), then kill -9, restarted 1 s later",
            (
                (0, "SIGSTOP persister", _pause("persister")),
                (5, "kill -9 persister", _kill("persister")),
                (6, "restart persister", _restart("persister")),
            ),
        ),
        Fault(
            "persister-kill9-backlog-of-two",
            "two persisters stalled 5 s (a backlog builds), then kill -9 of one (the other "
            "takes over its entries), restarted 2 s later",
            (
                (0, "SIGSTOP both persisters", _pause("persister", "persister2")),
                (
                    5,
                    "kill -9 persister, SIGCONT persister2",
                    _both(_kill("persister"), _resume("persister2")),
                ),
                (7, "restart persister", _restart("persister")),
            ),
            before=_start("persister2", "persister"),
            after=_stop("persister2"),
        ),
        Fault(
            "redis-kill9-aof",
            "kill -9 of Redis with AOF on (appendfsync everysec), restarted 3 s later",
            (
                (0, "kill -9 redis", lambda r: r.redis.kill()),
                (3, "restart redis (AOF)", lambda r: r.redis.start(aof=True)),
            ),
        ),
        Fault(
            f"postgres-down-{postgres_down_s:g}s",
            f"PostgreSQL killed hard (every process) and started again {postgres_down_s:g} s later",
            (
                (0, "kill -9 postgres", lambda r: r.postgres.kill()),
                (postgres_down_s, "start postgres", lambda r: r.postgres.start()),
            ),
        ),
        Fault(
            "redis-stall",
            f"Redis stalled with SIGSTOP for {stall_s:g} s, then SIGCONT",
            (
                (0, "SIGSTOP redis", lambda r: r.redis.pause()),
                (stall_s, "SIGCONT redis", lambda r: r.redis.resume()),
            ),
        ),
        Fault(
            "postgres-stall",
            f"PostgreSQL stalled with SIGSTOP for {stall_s:g} s, then SIGCONT",
            (
                (0, "SIGSTOP postgres", lambda r: r.postgres.pause()),
                (stall_s, "SIGCONT postgres", lambda r: r.postgres.resume()),
            ),
        ),
        Fault(
            "partition-api-redis",
            f"one API process cut off from Redis for {stall_s:g} s (network namespace)",
            (
                (0, "cut api2 from redis", lambda r: _namespace(r).cut_redis()),
                (stall_s, "heal", lambda r: _namespace(r).heal_redis()),
            ),
        ),
        Fault(
            "redis-kill9-no-persistence",
            "kill -9 of Redis without persistence (everything in it is lost), restarted "
            "3 s later; the sale is repaired from PostgreSQL",
            (
                (0, "kill -9 redis", lambda r: r.redis.kill()),
                (3, "restart redis, empty", lambda r: r.redis.start(aof=False)),
            ),
            after=_redis_aof_again,
            redis_lost=True,
        ),
    ]


def _namespace(r: Rig) -> Namespace:
    assert r.namespace is not None
    return r.namespace


SHORT = ("api-kill9", "persister-kill9-backlog", "redis-kill9-aof", "postgres-down-15s")


# -- one fault, one sale ---------------------------------------------------------------------


@dataclass
class Outcome:
    """One fault's sale, judged."""

    fault: Fault
    sale: str = ""
    struck_at: float = 0.0
    healed_at: float = 0.0
    verdict: Verdict | None = None
    recovery_s: float | None = None
    during_5xx: int = 0  # every 5xx: the API's designed 503s with Retry-After and the others
    during_retry_after: int = 0  # the API's 503 with Retry-After (an outage, said so)
    after_5xx: int = 0
    during_unanswered: int = 0
    after_unanswered: int = 0
    sold: int = 0
    stock: int = 0
    dead_letters: int = 0
    confirmed_seen: int = 0
    settled: bool = False
    # "kind status [who code]" -> count, of the 5xx and the requests without an answer
    errors: dict[str, int] = field(default_factory=dict)
    # "kind status" -> count, of every answer during the fault
    answered_during: dict[str, int] = field(default_factory=dict)
    repaired: str = ""
    error: str = ""
    steps: list[tuple[float, str]] = field(default_factory=list)
    probes: list[tuple[float, bool]] = field(default_factory=list)
    events: list[tuple[float, str, int, str]] = field(default_factory=list)
    sold_over_time: list[tuple[float, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and self.settled and self.verdict is not None and self.verdict.ok


async def probe(url: str, stop: asyncio.Event, out: list[tuple[float, bool]]) -> None:
    """GET /readyz through HAProxy every 0.25 s: did the service answer?"""
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                ok = (await client.get(url)).status_code == 200
            out.append((time.time(), ok))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)


def recovery(probes: Sequence[tuple[float, bool]], struck: float) -> tuple[float, float]:
    """Seconds from the strike until the service answered again (0 when it never stopped
    answering), and the moment it did."""
    after = [(t, ok) for t, ok in probes if t >= struck]
    failed = [t for t, ok in after if not ok]
    if not failed:
        return 0.0, struck
    back = next((t for t, ok in after if ok and t > failed[-1]), after[-1][0])
    return back - struck, back


async def repair(the_rig: Rig, sale_id: str, hold_seconds: int) -> str:
    """What an operator does after Redis lost everything: once the holds Redis forgot have
    expired, `flashsale reconcile SALE --repair` (it releases them in PostgreSQL and loads the
    sale's stock into Redis again)."""
    await asyncio.sleep(hold_seconds + 1)
    argv = [*FLASHSALE, "reconcile", sale_id, "--repair", "--force"]
    done = await asyncio.to_thread(
        subprocess.run, argv, env=the_rig.env, capture_output=True, text=True, timeout=60
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return f"reconcile --repair exited {done.returncode}: {done.stderr[-300:]}"
    return f"reconcile --repair: repaired={report.get('repaired')}, ok={report.get('ok')}" + (
        f", {report.get('differences')}" if report.get("differences") else ""
    )


async def run_fault(the_rig: Rig, fault: Fault, n: int, seed: int) -> Outcome:
    """One sale with `fault` striking during it, settled and judged."""
    plan = PLAN
    admin = {"Authorization": f"Bearer {the_rig.settings.admin_token}"}
    if fault.before:
        await asyncio.to_thread(fault.before, the_rig)
    steps: list[tuple[float, str]] = []
    probes: list[tuple[float, bool]] = []
    stop = asyncio.Event()
    sale_id = f"chaos-{n:02d}-{secrets.token_hex(3)}"
    try:
        async with opened(plan, the_rig.settings, the_rig.internal, seed) as crowd:
            crowd.created_at = time.time()
            await create_sale(
                crowd, admin, sale_id, math.ceil(crowd.created_at + plan.lead_seconds)
            )
            shoppers = plan_shoppers(plan, 250, crowd.rng, crowd.created_at, crowd.opens_at)
            watchers = [
                asyncio.create_task(watch_room(crowd, stop, every=0.25)),
                asyncio.create_task(progress(crowd, shoppers, stop, every=3.0)),
                asyncio.create_task(
                    probe(f"http://127.0.0.1:{the_rig.internal}/readyz", stop, probes)
                ),
            ]
            deadline = crowd.created_at + plan.hard_timeout_seconds
            shopping = asyncio.create_task(release(crowd, shoppers, shop, deadline))
            struck = crowd.opens_at + STRIKE_AFTER_OPENING_S
            await asyncio.sleep(max(0.0, struck - time.time()))
            struck = time.time()
            for at, what, action in fault.steps:
                await asyncio.sleep(max(0.0, struck + at - time.time()))
                log(f"chaos: {fault.name}: {what}")
                steps.append((time.time(), what))
                await asyncio.to_thread(action, the_rig)
            healed = time.time()
            await shopping
            repaired = await repair(the_rig, sale_id, plan.hold_seconds) if fault.redis_lost else ""
            if repaired:
                log(f"chaos: {fault.name}: {repaired}")
            reconciled, settled_at = await settle(crowd, admin, time.time() + plan.settle_seconds)
            stop.set()
            await asyncio.gather(*watchers, return_exceptions=True)
            facts = await store.read_facts(the_rig.settings, sale_id)
            verdict = judge(
                facts.ledger, crowd.checkout.seen(), facts.stream, reconciled, facts.redis
            )
            with contextlib.suppress(httpx.HTTPError):
                await crowd.http.post(f"/admin/sales/{sale_id}/close", headers=admin, timeout=10)
            return make_outcome(
                fault,
                crowd,
                sale_id,
                struck,
                healed,
                facts,
                verdict,
                settled_at,
                repaired,
                steps,
                probes,
            )
    finally:
        stop.set()
        if fault.after:
            await asyncio.to_thread(fault.after, the_rig)


def make_outcome(
    fault: Fault,
    crowd: Crowd,
    sale_id: str,
    struck: float,
    healed: float,
    facts: store.Facts,
    verdict: Verdict,
    settled_at: float | None,
    repaired: str,
    steps: list[tuple[float, str]],
    probes: list[tuple[float, bool]],
) -> Outcome:
    """The figures of one fault's sale: recovery from the probes, 5xx and unanswered requests
    during the fault (until it healed and the service answered again) and after it."""
    recovery_s, back = recovery(probes, struck)
    end_of_fault = max(back, healed)
    during = [(k, s, by) for t, k, s, by in crowd.events if struck <= t <= end_of_fault]
    after = [s for t, _, s, _ in crowd.events if t > end_of_fault]
    return Outcome(
        fault=fault,
        sale=sale_id,
        struck_at=struck,
        healed_at=healed,
        verdict=verdict,
        recovery_s=round(recovery_s, 2),
        during_5xx=sum(1 for _, s, _ in during if s >= 500),
        during_retry_after=sum(1 for _, s, by in during if s == 503 and by.endswith("retry-after")),
        after_5xx=sum(1 for s in after if s >= 500),
        during_unanswered=sum(1 for _, s, _ in during if s == 0),
        after_unanswered=sum(1 for s in after if s == 0),
        sold=facts.ledger.sold,
        stock=facts.ledger.stock,
        dead_letters=len(facts.stream.dead),
        confirmed_seen=len(crowd.checkout.confirmed),
        settled=settled_at is not None,
        errors=dict(
            Counter(
                f"{kind} {status or 'no answer'}" + (f" {by}" if by else "")
                for _, kind, status, by in crowd.events
                if status >= 500 or status == 0
            ).most_common()
        ),
        answered_during=dict(
            Counter(f"{kind} {status or 'no answer'}" for kind, status, _ in during).most_common()
        ),
        repaired=repaired,
        steps=steps,
        probes=probes,
        events=crowd.events,
        sold_over_time=[(x.t, x.sold) for x in crowd.samples],
    )


# -- the report ------------------------------------------------------------------------------

HEADERS = (
    "fault",
    "recovery s",
    "5xx during",
    "of which 503 Retry-After",
    "5xx after",
    "no answer during",
    "no answer after",
    "sold / stock",
    "oversold",
    "lost confirmed",
    "duplicated",
    "stuck",
    "dead letters",
    "settled",
    "invariants",
)


def table_rows(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for o in outcomes:
        v = o.verdict
        rows.append(
            [
                o.fault.name,
                o.recovery_s,
                o.during_5xx,
                o.during_retry_after,
                o.after_5xx,
                o.during_unanswered,
                o.after_unanswered,
                f"{o.sold} / {o.stock}",
                v.oversold if v else None,
                v.lost_confirmed if v else None,
                v.duplicated if v else None,
                v.stuck if v else None,
                o.dead_letters,
                o.settled,
                "ok" if o.ok else "BROKEN",
            ]
        )
    return rows


def plot_fault(folder: Path, n: int, o: Outcome) -> str | None:
    """Answers per second by kind, and units sold, over the fault's sale."""
    if not o.events:
        return None
    start = min(t for t, _, _, _ in o.events)
    end = max(t for t, _, _, _ in o.events)
    kinds = {
        "2xx-4xx": [t for t, _, s, _ in o.events if 0 < s < 500],
        "5xx": [t for t, _, s, _ in o.events if s >= 500],
        "no answer": [t for t, _, s, _ in o.events if s == 0],
    }
    lines: list[tuple[str, Sequence[float], Sequence[float]]] = []
    for label, times in kinds.items():
        xs, ys = per_second(times, start, end)
        lines.append((f"{label} per s", xs, ys))
    lines.append(
        (
            "units sold (Redis)",
            [t - start for t, _ in o.sold_over_time],
            [s for _, s in o.sold_over_time],
        )
    )
    name = f"fault-{n:02d}-{o.fault.name}.png"
    made = line_plot(
        folder / name,
        f"{o.fault.name}: {o.fault.what}",
        lines,
        xlabel="seconds from the first request",
        ylabel="answers per second / units",
        spans=[(o.struck_at - start, o.healed_at - start, "fault")],
        marks=[(t - start, what) for t, what in o.steps],
    )
    return name if made else None


def write_report(
    folder: Path, outcomes: Sequence[Outcome], figures: dict[str, Any], notes: Sequence[str]
) -> Path:
    lines = [
        f"# FlashSale chaos run: {figures['started']}",
        "",
        f"{len(outcomes)} faults, each during a sale of its own ({PLAN.stock} units, 250 "
        f"shoppers retrying like real clients, holds of {PLAN.hold_seconds} s); two API "
        "processes behind HAProxy, an admitter and a persister on a Redis and a PostgreSQL of "
        f"the run's own. {os.cpu_count()} CPUs, load average {figures['load_average']:.1f} at "
        "the start.",
        "",
        f"**Invariants: {'all hold' if figures['invariants_ok'] else 'BROKEN'}** — oversold "
        f"{figures['oversold']}, lost confirmed {figures['lost_confirmed']}, duplicated "
        f"{figures['duplicated']}, stuck {figures['stuck']}; the slowest recovery "
        f"{figures['recovery_s_max']} s.",
        "",
        "Recovery: from the strike until /readyz through HAProxy answered 200 again (0: it "
        "never stopped). 5xx and requests that got no answer are counted during the fault "
        "(until it healed and the service answered again) and after it; the shoppers retried "
        "them. Of the 5xx, the API's 503 with Retry-After is its designed answer to an outage "
        "(a data store not answering, a payment taken that cannot be confirmed yet); the rest "
        "(a 500, HAProxy with no server to send it to) are not.",
        "",
        *markdown_table(HEADERS, table_rows(outcomes)),
        "",
    ]
    lines += [f"- {note}" for note in notes]
    for n, o in enumerate(outcomes, 1):
        lines += ["", f"## {n}. {o.fault.name}", "", o.fault.what, ""]
        lines += [
            f"- {datetime.fromtimestamp(t, UTC):%H:%M:%S.%f}"[:-3] + f" {what}"
            for t, what in o.steps
        ]
        if o.repaired:
            lines.append(f"- {o.repaired}")
        if o.error:
            lines.append(f"- ERROR: {o.error}")
        if o.verdict is not None:
            lines.append(
                f"- sale {o.sale}: sold {o.sold} of {o.stock}; shoppers saw {o.confirmed_seen} "
                f"payments confirmed; {o.verdict.confirmed_unseen} confirmed orders whose "
                "answer no shopper got"
            )
            lines += [f"- PROBLEM: {p}" for p in o.verdict.problems]
        if o.answered_during:
            lines.append(
                "- answered during the fault: "
                + ", ".join(f"{what}: {n}" for what, n in o.answered_during.items())
            )
        if o.errors:
            lines.append(
                "- 5xx and requests without an answer (the shoppers retried them): "
                + ", ".join(f"{what}: {n}" for what, n in o.errors.items())
            )
        image = plot_fault(folder, n, o)
        if image:
            lines += ["", f"![{o.fault.name}]({image})"]
    lines += ["", "## Files", "", "`result.json`, `haproxy.cfg`, `logs/` (every process)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


# -- the run ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--faults", help="comma-separated fault names (default: all)")
    p.add_argument("--short", action="store_true", help=f"only {', '.join(SHORT)}")
    p.add_argument("--list", action="store_true", help="list the faults and exit")
    p.add_argument("--postgres-down-seconds", type=float, default=15)
    p.add_argument("--stall-seconds", type=float, default=8)
    p.add_argument("--no-partition", action="store_true", help="no network namespace")
    p.add_argument("--report-root", default=str(ROOT / "reports"))
    return p.parse_args(argv)


def chosen(args: argparse.Namespace) -> list[Fault]:
    faults = schedule(args.postgres_down_seconds, args.stall_seconds)
    names = args.faults.split(",") if args.faults else list(SHORT) if args.short else None
    if names is None:
        return faults
    by_name = {f.name: f for f in faults}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    faults = chosen(args)
    if args.list:
        for f in faults:
            print(f"{f.name}: {f.what}")
        return 0
    started = time.time()
    folder = Path(args.report_root) / f"chaos-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "invariants_ok": False,
        "faults": 0,
        "oversold": 0,
        "lost_confirmed": 0,
        "duplicated": 0,
        "stuck": 0,
        "recovery_s_max": None,
        "report": str(folder),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg()[0],
    }
    outcomes: list[Outcome] = []
    notes: list[str] = []
    log(f"chaos: {len(faults)} faults; report in {folder}")
    try:
        with rig(folder, partition=not args.no_partition) as the_rig, runner() as loop:
            notes = the_rig.notes
            for n, fault in enumerate(faults, 1):
                if fault.name.startswith("partition") and the_rig.namespace is None:
                    log(f"chaos: skipping {fault.name}: {notes}")
                    continue
                log(f"chaos: fault {n}/{len(faults)}: {fault.name} — {fault.what}")
                try:
                    o = loop.run(run_fault(the_rig, fault, n, secrets.randbits(32)))
                except Exception as exc:  # judged broken; the run goes on to the next fault
                    log(f"chaos: {fault.name} failed: {type(exc).__name__}: {exc}")
                    o = Outcome(fault, error=f"{type(exc).__name__}: {exc}")
                outcomes.append(o)
                log(
                    f"chaos: {fault.name}: {'ok' if o.ok else 'BROKEN'}; recovery "
                    f"{o.recovery_s} s; 5xx during {o.during_5xx}, after {o.after_5xx}"
                    + ("" if o.verdict is None else f"; {'; '.join(o.verdict.problems)}")
                )
    except Exception as exc:  # still write what there is, and end with the JSON line
        import traceback

        traceback.print_exc()
        figures["error"] = f"{type(exc).__name__}: {exc}"
    verdicts = [o.verdict for o in outcomes if o.verdict is not None]
    recoveries = [o.recovery_s for o in outcomes if o.recovery_s is not None]
    figures.update(
        {
            "invariants_ok": bool(outcomes)
            and all(o.ok for o in outcomes)
            and "error" not in figures,
            "faults": len(outcomes),
            "oversold": sum(v.oversold for v in verdicts),
            "lost_confirmed": sum(v.lost_confirmed for v in verdicts),
            "duplicated": sum(v.duplicated for v in verdicts),
            "stuck": sum(v.stuck for v in verdicts),
            "recovery_s_max": max(recoveries, default=None),
            "broken": [o.fault.name for o in outcomes if not o.ok],
            "seconds": round(time.time() - started, 1),
            "per_fault": {
                o.fault.name: {
                    "ok": o.ok,
                    "recovery_s": o.recovery_s,
                    "5xx_during": o.during_5xx,
                    "503_retry_after_during": o.during_retry_after,
                    "5xx_after": o.after_5xx,
                    "answered_during": o.answered_during,
                    "retried": o.errors,
                    "problems": o.verdict.problems if o.verdict else [o.error],
                }
                for o in outcomes
            },
        }
    )
    report = write_report(folder, outcomes, figures, notes)
    (folder / "result.json").write_text(json.dumps(figures, indent=2, default=str))
    print("\n".join(markdown_table(HEADERS, table_rows(outcomes))))
    verdict = "invariants hold" if figures["invariants_ok"] else "INVARIANTS BROKEN"
    print(f"FlashSale chaos: {verdict}; report {report}")
    final_line(figures)
    return 0 if figures["invariants_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
