"""`flashsale ROLE`: one command, one image, every role (api, admitter, persister, migrate,
prewarm, reconcile, operator). The top layer: it may import every other."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from flashsale.config import Settings, SettingsError
from flashsale.logs import setup_logging

log = logging.getLogger("flashsale")


API_APP = "flashsale.wiring:api_app"
SERVERS = ("uvicorn", "granian")  # the first is the default: README "Performance"
GRACE_SECONDS = 20  # in-flight requests get this long to finish on SIGTERM
BACKLOG = 4096


def run_api(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the API (or, for the benchmarks, another app: `--app`) with the HTTP server
    chosen by `--server` (uvicorn unless told; granian, from the `loadtest` extra, is there
    to be measured against it: README "Performance").
    Either way: HTTP/1.1, uvloop, the same backlog and workers, no access log of its own, the
    client's address as the peer (the app walks X-Forwarded-For itself: api/inputs.py)."""
    workers = args.workers or settings.workers
    if not settings.token_key:
        # every worker must sign with the same key, or a ticket from one fails on another
        os.environ["FLASHSALE_TOKEN_KEY"] = secrets.token_urlsafe(32)
        log.warning(
            "FLASHSALE_TOKEN_KEY is not set: tokens are signed with a key made up for "
            "this run and die with it"
        )
    # every worker writes its metrics to this folder; /metrics adds them up
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="flashsale-metrics-"
    )
    os.makedirs(metrics_dir, exist_ok=True)
    for entry in os.listdir(metrics_dir):
        os.unlink(os.path.join(metrics_dir, entry))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    host, port = args.host or settings.host, args.port or settings.port
    target = args.app or API_APP
    try:
        if (args.server or SERVERS[0]) == "uvicorn":
            _uvicorn(target, host, port, workers)
        else:
            _granian(target, host, port, workers, settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _uvicorn(target: str, host: str, port: int, workers: int) -> None:
    import uvicorn

    from flashsale.api.http1 import JsonErrors

    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=JsonErrors,  # httptools, answering what it cannot parse with the API's JSON
        proxy_headers=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACE_SECONDS,
        backlog=BACKLOG,
    )


def _granian(target: str, host: str, port: int, workers: int, settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    # granian's own lines (start, stop, worker deaths) in the same shape as ours
    formatter = "flashsale.logs.JsonFormatter" if settings.log_json else "logging.Formatter"
    logging_config = {
        "formatters": {"flashsale": {"()": formatter}},
        "handlers": {
            "flashsale": {
                "class": "logging.StreamHandler",
                "formatter": "flashsale",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"_granian": {"handlers": ["flashsale"], "propagate": False}},
    }
    Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        backlog=BACKLOG,
        log_level=LogLevels(settings.log_level.lower()),
        log_dictconfig=logging_config,
        log_access=False,
        factory=True,
        workers_kill_timeout=GRACE_SECONDS,
    ).serve()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _metrics_server(settings: Settings) -> None:
    """Serve /metrics of a background role. Call it before the modules defining metrics are
    imported: under PROMETHEUS_MULTIPROC_DIR (the image sets it for every role) samples live
    in files of that folder, and the ones a previous process left there are removed first."""
    if not settings.metrics_port:
        return
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        from prometheus_client.multiprocess import MultiProcessCollector

        clear_metric_files(folder)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)
    start_http_server(settings.metrics_port, registry=registry)


def clear_metric_files(folder: str) -> None:
    """Make the folder, and remove the files of processes that are gone, or of this pid (a
    container's role restarts as pid 1 and would otherwise carry on from its predecessor's
    figures). Files of other live processes sharing the folder stay."""
    os.makedirs(folder, exist_ok=True)
    for entry in os.listdir(folder):
        pid = entry.rsplit("_", 1)[-1].removesuffix(".db")
        if not (entry.endswith(".db") and pid.isdigit()):
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _admitter(settings: Settings) -> None:
    _metrics_server(settings)
    from flashsale.waiting_room.admitter import Admitter
    from flashsale.wiring import opened

    async with opened(settings, pool_size=2) as services:
        admitter = Admitter(
            services.sales,
            services.room,
            services.stock,
            tick_ms=settings.admitter_tick_ms,
            refresh_seconds=settings.admitter_refresh_seconds,
            prewarm_lead_seconds=settings.prewarm_lead_seconds,
            sale_timeout_seconds=settings.sale_timeout_seconds,
        )
        await admitter.run(_stop_on_signals())


def run_admitter(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_admitter(settings))
    return 0


async def _persister(settings: Settings) -> None:
    _metrics_server(settings)
    from flashsale.waiting_room.persister import Persister
    from flashsale.wiring import opened

    async with opened(settings, pool_size=4) as services:
        persister = Persister(
            services.redis,
            services.pool,
            services.sales,
            services.purchases,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            batch=settings.persister_batch,
            claim_idle_ms=settings.persister_claim_idle_ms,
            max_deliveries=settings.persister_max_deliveries,
            sweep_interval_ms=settings.sweep_interval_ms,
            refresh_seconds=settings.admitter_refresh_seconds,
            reconcile_every_seconds=settings.reconcile_interval_seconds,
            sale_timeout_seconds=settings.sale_timeout_seconds,
        )
        await persister.run(_stop_on_signals())


def run_persister(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_persister(settings))
    return 0


async def _prewarm(settings: Settings, sale_id: str, force: bool) -> dict[str, Any]:
    from flashsale.wiring import opened

    async with opened(settings, pool_size=4) as services:
        sale = await services.sales.get(sale_id)
        return await services.stock.prewarm(sale, force=force)


def run_prewarm(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.waiting_room.sales import SaleNotFound

    try:
        result = asyncio.run(_prewarm(settings, args.sale, args.force))
    except SaleNotFound:
        print(f"flashsale: no sale {args.sale!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0 if result["outcome"] == "ok" else 1


async def _reconcile(settings: Settings, sale_id: str, repair: bool, force: bool) -> dict[str, Any]:
    from flashsale.wiring import opened

    async with opened(settings, pool_size=4) as services:
        sale = await services.sales.get(sale_id)
        return (await services.stock.reconcile(sale, repair=repair, force=force)).as_dict()


def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.waiting_room.sales import SaleNotFound
    from flashsale.waiting_room.stock import NotDrained

    try:
        report = asyncio.run(_reconcile(settings, args.sale, args.repair, args.force))
    except SaleNotFound:
        print(f"flashsale: no sale {args.sale!r}", file=sys.stderr)
        return 2
    except NotDrained as exc:
        print(f"flashsale: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.waiting_room.db import migrate

    applied = asyncio.run(migrate(settings))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def run_operator(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.operator.main import serve
    from flashsale.wiring import opened

    async def operate() -> None:
        async with opened(settings, pool_size=4) as services:
            await serve(services)

    asyncio.run(operate())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashsale", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    api = roles.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int)
    api.add_argument("--server", choices=SERVERS, help=f"HTTP server (default: {SERVERS[0]})")
    api.add_argument("--app", help=argparse.SUPPRESS)  # loadtest/serve.py: another app
    api.set_defaults(func=run_api)
    roles.add_parser("admitter", help="admit waiting shoppers in batches").set_defaults(
        func=run_admitter
    )
    roles.add_parser(
        "persister", help="write orders from Redis to PostgreSQL; expire holds"
    ).set_defaults(func=run_persister)
    roles.add_parser("migrate", help="apply pending PostgreSQL migrations").set_defaults(
        func=run_migrate
    )
    prewarm = roles.add_parser("prewarm", help="load a sale's stock from PostgreSQL into Redis")
    prewarm.add_argument("sale")
    prewarm.add_argument(
        "--force",
        action="store_true",
        help="overwrite a sale already warm (use reconcile --repair instead)",
    )
    prewarm.set_defaults(func=run_prewarm)
    reconcile = roles.add_parser(
        "reconcile", help="check stock = sold + held + available in both stores"
    )
    reconcile.add_argument("sale")
    reconcile.add_argument(
        "--repair", action="store_true", help="rebuild Redis from PostgreSQL when they differ"
    )
    reconcile.add_argument(
        "--force", action="store_true", help="repair even while the stream is not drained"
    )
    reconcile.set_defaults(func=run_reconcile)
    roles.add_parser(
        "operator", help="run the Kubernetes operator for FlashSale objects"
    ).set_defaults(func=run_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"flashsale: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    with contextlib.suppress(KeyboardInterrupt):
        code: int = args.func(settings, args)
        return code
    return 130


if __name__ == "__main__":
    sys.exit(main())
