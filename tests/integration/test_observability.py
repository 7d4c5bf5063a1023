"""Ops: the metrics the dashboard and the alerts query are the ones the code exports, the
dashboard ships in the chart, and the request id reaches every log line of a request.

"Exported" is decided by running the code (an HTTP sale through the real app, admitter and
persister steps, against real Redis and PostgreSQL) and collecting the registry, not by reading
the source; the names are taken out of the PromQL of the rendered chart with a small tokenizer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flashsale.api.app import ROUTES
from flashsale.config import Settings
from flashsale.logs import JsonFormatter
from flashsale.waiting_room.admitter import Admitter
from flashsale.waiting_room.persister import Persister
from flashsale.waiting_room.sale import Sale
from flashsale.waiting_room.services import Services
from tests.deploy.test_chart import CHART, render
from tests.support import REPO, Clock, app_for, free_port, only

MakeSale = Callable[..., Awaitable[Sale]]
DASHBOARD = CHART / "dashboards" / "flashsale.json"
# series Prometheus makes itself, not the code
PROMETHEUS_OWN = {"up"}

# --- PromQL: the metric names an expression reads --------------------------------------------

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_TOKEN = re.compile(r"\$\{?\w+\}?|[A-Za-z_:][A-Za-z0-9_:]*|\d[\w.]*|\S")


def _skip_group(tokens: list[str], start: int, opening: str, closing: str) -> int:
    """Index just past the group opening at tokens[start]."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index] == opening:
            depth += 1
        elif tokens[index] == closing:
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening}{closing}")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by `{` or `[` or standing
    alone, leaving out functions (an identifier followed by `(`), keywords and aggregation
    operators, label names (inside `{}` and in by/on/... lists), strings, numbers, durations
    and Grafana variables."""
    tokens = _TOKEN.findall(_STRING.sub('""', expr))
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ("{", "["):
            index = _skip_group(tokens, index, token, "}" if token == "{" else "]")
            continue
        index += 1
        if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token):
            continue  # punctuation, a number, a duration, a $variable
        if token.lower() in LABEL_LISTS and following == "(":
            index = _skip_group(tokens, index, "(", ")")
        elif token.lower() in KEYWORDS or following == "(":
            continue
        else:
            names.add(token)
    return names


def test_metric_names_tokenizer() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(http_seconds_bucket{route!~"
        '"/metrics|x{y}", status=~"5.."}[$__rate_interval]))) > 1 and on (namespace) '
        "time() - max(last_seconds offset 5m) > 1e3 or vector(0) unless "
        'label_replace(absent(up == 1), "a", "$1", "b", "(.*)") or bare_metric '
        "and ignoring(sale) group_left(x) other:recorded:rule"
    )
    assert metric_names(expr) == {
        "http_seconds_bucket",
        "last_seconds",
        "up",
        "bare_metric",
        "other:recorded:rule",
    }


# --- the chart: dashboard, alerts ----------------------------------------------------------


def rendered_monitoring(**dashboard: Any) -> list[dict[str, Any]]:
    return render(
        {
            "metrics": {
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True, **dashboard},
            }
        }
    )


@cache
def monitoring() -> tuple[dict[str, Any], ...]:
    """The chart with the alerts and the dashboard on, default values otherwise."""
    return tuple(rendered_monitoring())


def dashboard_queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard (panel targets and query variables)."""
    board = json.loads(DASHBOARD.read_text())
    queries = {
        f"panel {p['title']!r} {t['refId']}": t["expr"]
        for p in board["panels"]
        for t in p["targets"]
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert found, query
            queries[f"variable {variable['name']}"] = found.group(1)
    return queries


def alert_queries() -> dict[str, str]:
    (rule,) = [o for o in monitoring() if o["kind"] == "PrometheusRule"]
    return {f"alert {r['alert']}": r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_dashboard_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "flashsale-overview" and board["title"] == "FlashSale"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    sale = variables["sale"]
    assert sale["type"] == "query" and sale["query"]["query"].startswith("label_values(")
    assert sale["query"]["query"].endswith(", sale)")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["title"].strip(), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    titles = " | ".join(p["title"] for p in board["panels"]).lower()
    for needed in (
        "waiting",
        "admission rate",
        "active shoppers vs max",
        "holds open",
        "units sold",
        "stock remaining",
        "persister lag",
        "stock mismatch",
        "request rate",
        "p50 / p95 / p99",
        "status class",
        "last batch age",
        "proof of work",
        "sale failures",
    ):
        assert needed in titles, needed


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    (configmap,) = [o for o in monitoring() if o["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == "flashsale-dashboard"
    assert configmap["metadata"]["namespace"] == "shop"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["flashsale.json"]) == json.loads(DASHBOARD.read_text())

    custom = rendered_monitoring(
        sidecarLabel="dashboards.example/load",
        sidecarLabelValue="yes",
        namespace="monitoring",
        annotations={"grafana_folder": "Shop"},
    )
    (configmap,) = [o for o in custom if o["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["dashboards.example/load"] == "yes"
    assert "grafana_dashboard" not in configmap["metadata"]["labels"]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Shop"}

    assert not [o for o in render({}) if o["kind"] == "ConfigMap"], "disabled: none at all"


def test_alerts_cover_what_ops_need() -> None:
    alerts = alert_queries()
    assert {
        "alert FlashSalePersisterLagging",
        "alert FlashSaleStockMismatch",
        "alert FlashSaleAdmitterStalled",
        "alert FlashSaleAPIErrorRate",
        "alert FlashSaleAPILatencyHigh",
        "alert FlashSaleSaleFailing",
        "alert FlashSaleProofOfWorkAtCeiling",
    } <= set(alerts)
    (rule,) = [o for o in monitoring() if o["kind"] == "PrometheusRule"]
    for alert in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


# --- what the code exports, collected from running it --------------------------------------


def exported_names() -> set[str]:
    """Sample names in the registry: counters with _total, histograms' _bucket/_count/_sum."""
    return {s.name for metric in REGISTRY.collect() for s in metric.samples}


def persister_for(services: Services, sale: Sale, **options: Any) -> Persister:
    class One(Persister):
        async def _sales_to_drain(self) -> list[Sale]:
            return [await self.sales.get(sale.id)]

    return One(
        services.redis,
        services.pool,
        services.sales,
        services.purchases,
        consumer="observability",
        sweep_interval_ms=0,
        refresh_seconds=0,
        reconcile_every_seconds=0.001,
        reconcile_confirm_seconds=0,
        **options,
    )


def sample(name: str, sale: Sale, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"sale": sale.id, **labels})


async def test_every_metric_the_dashboard_and_alerts_query_is_exported(
    client: httpx.AsyncClient,
    services: Services,
    make_sale: MakeSale,
    clock: Clock,
    redis: Redis,
) -> None:
    sale = await make_sale(stock=5)
    # a sale asking new places for a proof of work, admitted beside it: its difficulty gauge
    priced = await make_sale(
        stock=5,
        opens_at=sale.opens_at.isoformat(),
        closes_at=sale.closes_at.isoformat(),
        proof_of_work={"enabled": True, "difficulty": 18},
    )
    # a shopper joins through the API before the opening, and polls once it has come
    joined = (await client.post(f"/api/sales/{sale.id}/join")).json()
    ticket = {"X-Queue-Ticket": joined["ticket"]}
    clock.advance(sale.opens_at.timestamp() - clock() + 1)
    status = f"/api/sales/{sale.id}/status"
    assert (await client.get(status, headers=ticket)).status_code == 200
    admitter = Admitter(
        only(services.sales, sale.id, priced.id),
        services.room,
        services.stock,
        tick_ms=10,
        refresh_seconds=0,
        prewarm_lead_seconds=7200,
        gauges_every_seconds=0,
    )
    for _ in range(20):  # pre-warm, open (the pre-queue draw), admit
        await admitter.step()
        polled = (await client.get(status, headers=ticket)).json()
        if polled["state"] == "admitted":
            break
        clock.advance(sale.batch_interval_ms / 1000)
    assert polled["state"] == "admitted", polled
    await admitter.step()
    assert sample("flashsale_active_shoppers", sale) == 1
    assert sample("flashsale_waiting", sale) == 0
    # hold and pay
    held = await client.post(
        f"/api/sales/{sale.id}/holds",
        json={"quantity": 1},
        headers={"Authorization": f"Bearer {polled['admission_token']}"},
    )
    assert held.status_code == 201, held.text
    await admitter.step()
    assert (
        sample("flashsale_holds_open", sale),
        sample("flashsale_stock_held_units", sale),
        sample("flashsale_stock_available_units", sale),
    ) == (1, 1, 4)
    paid = await client.post(
        f"/api/sales/{sale.id}/orders/{held.json()['id']}/pay",
        json={"payment_token": "tok_approve"},
        headers={"X-Visitor-Id": joined["visitor_id"]},
    )
    assert paid.status_code == 200, paid.text
    await admitter.step()
    # the persister writes the hold, dead-letters a poison entry, sweeps, measures, reconciles
    await redis.xadd(services.room.keys(sale.id).orders_stream, {"type": "bogus"})
    persister = persister_for(services, sale)
    for _ in range(3):
        await persister.step()

    # the per-sale figures are right, not merely present
    assert sample("flashsale_stock_sold_units", sale) == 1
    assert sample("flashsale_stock_available_units", sale) == 4
    assert sample("flashsale_stock_held_units", sale) == 0
    assert sample("flashsale_holds_open", sale) == 0
    assert sample("flashsale_active_shoppers", sale) == 0, "a shopper who bought is done"
    assert sample("flashsale_active_shoppers_limit", sale) == sale.max_active
    assert sample("flashsale_sale_opens_timestamp_seconds", sale) == sale.opens_at.timestamp()
    assert sample("flashsale_admitted_total", sale) == 1
    assert sample("flashsale_persister_lag_entries", sale) == 0
    assert sample("flashsale_dead_letter_entries_total", sale) == 1
    assert sample("flashsale_stock_mismatch", sale) == 0, "Redis and PostgreSQL agree"
    assert time.time() - sample("flashsale_reconcile_last_run_timestamp_seconds", sale) < 60
    assert sample("flashsale_pow_difficulty_bits", priced) == 18
    assert sample("flashsale_pow_difficulty_bits", sale) is None, "no proof of work asked"

    # one sale's share of a tick fails (its room's meta key of the wrong type: Redis refuses
    # the admission script): counted for that sale and role, the other sale goes on
    broken = await make_sale(stock=5)
    meta = services.room.keys(broken.id).meta
    await redis.delete(meta)
    await redis.set(meta, "not a hash")
    pair = Admitter(
        only(services.sales, priced.id, broken.id),
        services.room,
        services.stock,
        tick_ms=10,
        refresh_seconds=0,
        prewarm_lead_seconds=7200,
        gauges_every_seconds=0,
    )
    await pair.step()
    assert sample("flashsale_sale_failures_total", broken, role="admitter") == 1
    assert sample("flashsale_sale_failures_total", priced, role="admitter") is None
    await redis.delete(meta)

    exported = exported_names()
    queries = {**dashboard_queries(), **alert_queries()}
    used: dict[str, set[str]] = {}
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exported and name not in PROMETHEUS_OWN
    }
    assert not missing, f"queried but not exported: {missing}"
    assert len(used) >= 20


async def test_stock_mismatch_counts_only_when_seen_twice(
    services: Services,
    make_sale: MakeSale,
    redis: Redis,
) -> None:
    sale = await make_sale(stock=10)
    await services.stock.prewarm(sale)
    persister = persister_for(services, sale)
    await persister.step()
    assert sample("flashsale_stock_mismatch", sale) == 0
    inventory = services.room.keys(sale.id).inventory
    await redis.hincrby(inventory, "sold", 1)  # Redis now counts a sale PostgreSQL never saw
    await persister.step()
    assert sample("flashsale_stock_mismatch", sale) == 0, "once may be a payment in flight"
    await persister.step()
    assert sample("flashsale_stock_mismatch", sale) == 1
    await redis.hincrby(inventory, "sold", -1)
    await persister.step()
    assert sample("flashsale_stock_mismatch", sale) == 0


async def test_admitter_metrics_under_prometheus_multiproc_dir(
    settings: Settings,
    make_sale: MakeSale,
    tmp_path: Path,
) -> None:
    """As in the image (PROMETHEUS_MULTIPROC_DIR set for every role): the admitter makes the
    folder, drops a dead predecessor's files, and serves its gauges without a pid label."""
    sale = await make_sale()
    folder = tmp_path / "metrics"
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    folder.mkdir()
    (folder / f"gauge_max_{gone.pid}.db").write_bytes(b"not a metrics file")
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
        "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
        "FLASHSALE_TOKEN_KEY": settings.token_key,
        "FLASHSALE_METRICS_PORT": str(port),
        "FLASHSALE_ADMITTER_REFRESH_SECONDS": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    log = tmp_path / "admitter.log"
    with log.open("wb") as out:
        admitter = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flashsale.cli",
            "admitter",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    wanted = f'flashsale_waiting{{sale="{sale.id}"}}'
    text = ""
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                if admitter.returncode is not None:
                    break
                try:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    text = ""
                if wanted in text:
                    break
                await asyncio.sleep(0.05)
    finally:
        if admitter.returncode is None:
            admitter.terminate()
        await admitter.wait()
    assert wanted in text, log.read_text()[-3000:]
    assert f'flashsale_active_shoppers_limit{{sale="{sale.id}"}} 50.0' in text
    assert 'pid="' not in text
    assert not (folder / f"gauge_max_{gone.pid}.db").exists()
    assert any(p.name.startswith("gauge_max_") for p in folder.iterdir())


# --- logs: the request id, the access log --------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON log lines as `flashsale` writes them (formatted when emitted, as in production)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def http_client(
    services: Services, *, access_log: bool, extra_routes: tuple[Route, ...] = ()
) -> httpx.AsyncClient:
    settings = dataclasses.replace(services.settings, access_log=access_log)
    app = app_for(dataclasses.replace(services, settings=settings))
    app.router.routes.extend(extra_routes)
    transport = httpx.ASGITransport(
        app=app, client=("203.0.113.7", 40000), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_access_log_line_carries_the_request_id(
    services: Services,
    make_sale: MakeSale,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    sale = await make_sale()
    async with http_client(services, access_log=True) as http:
        answer = await http.get(f"/api/sales/{sale.id}", headers={"X-Request-ID": "req-7f1c.42"})
        unknown = await http.get("/no/such/page")
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-7f1c.42"
    access = [line for line in log_lines() if line["logger"] == "flashsale.access"]
    first, second = access
    assert first["request_id"] == "req-7f1c.42"
    assert first["method"] == "GET" and first["route"] == "/api/sales/{sale_id}"
    assert first["status"] == 200 and first["sale"] == sale.id
    assert first["client"] == "203.0.113.7"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    # no id given (or a malformed one): a fresh one, the same in the answer and the line
    assert second["route"] == "unmatched" and second["status"] == 404
    assert re.fullmatch(r"[0-9a-f]{32}", second["request_id"])
    assert unknown.headers["x-request-id"] == second["request_id"]


async def test_no_access_log_by_default(
    client: httpx.AsyncClient,
    make_sale: MakeSale,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    assert Settings.from_env({}).access_log is False
    sale = await make_sale()
    assert (await client.get(f"/api/sales/{sale.id}")).status_code == 200
    assert not [line for line in log_lines() if line["logger"] == "flashsale.access"]


async def test_handler_log_lines_carry_the_request_id(
    services: Services,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    async def logs(request: Request) -> JSONResponse:
        logging.getLogger("waiting_room.example").warning("from a handler", extra={"sale": "s-1"})
        return JSONResponse({})

    async def fails(request: Request) -> JSONResponse:
        raise RuntimeError("a bug")

    routes = (Route("/test/logs", logs), Route("/test/fails", fails))
    async with http_client(services, access_log=True, extra_routes=routes) as http:
        fine = await http.get("/test/logs", headers={"X-Request-ID": "req-logs"})
        broken = await http.get("/test/fails", headers={"X-Request-ID": "req-fails"})
    assert not [r for r in ROUTES if r.path.startswith("/test/")], "the app's routes are a copy"
    assert fine.status_code == 200
    lines = log_lines()
    (handler,) = [line for line in lines if line["msg"] == "from a handler"]
    assert handler["request_id"] == "req-logs" and handler["sale"] == "s-1"
    # an unhandled error is logged by Starlette's outermost handler: still with the id, which
    # the 500 answer names too
    (error,) = [line for line in lines if line["msg"] == "unhandled error"]
    assert error["request_id"] == "req-fails" and "RuntimeError: a bug" in error["exc"]
    assert broken.status_code == 500
    assert broken.json()["error"]["request_id"] == "req-fails"
    assert broken.headers["x-request-id"] == "req-fails"
    (access,) = [
        line
        for line in lines
        if line["logger"] == "flashsale.access" and line["request_id"] == "req-fails"
    ]
    assert access["status"] == 500 and access["route"] == "/test/fails"
