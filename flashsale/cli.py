"""`flashsale ROLE`: one command, one image, every role (api, admitter, migrate, demo)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from flashsale.logs import setup_logging
from flashsale.settings import Settings, SettingsError

log = logging.getLogger("flashsale")


def run_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    workers = args.workers or settings.workers
    # every worker writes its metrics to this folder; /metrics adds them up
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="flashsale-metrics-"
    )
    for entry in os.listdir(metrics_dir):
        os.unlink(os.path.join(metrics_dir, entry))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "api.app:factory",
            factory=True,
            host=args.host or settings.host,
            port=args.port or settings.port,
            workers=workers,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=20,
            backlog=4096,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


async def _admitter(settings: Settings) -> None:
    from prometheus_client import start_http_server
    from redis.asyncio import Redis

    from waiting_room.admitter import Admitter
    from waiting_room.db import connect_pool
    from waiting_room.room import WaitingRoom
    from waiting_room.sales import Sales
    from waiting_room.tokens import Signer

    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    pool = await connect_pool(settings, max_size=2)
    room = WaitingRoom(redis, settings, Signer(settings.signing_keys()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        admitter = Admitter(Sales(pool, room), room, tick_ms=settings.admitter_tick_ms,
                            refresh_seconds=settings.admitter_refresh_seconds)
        await admitter.run(stop)
    finally:
        await pool.close()
        await redis.aclose()


def run_admitter(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_admitter(settings))
    return 0


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from waiting_room.db import migrate

    applied = asyncio.run(migrate(settings))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.demo import run

    return run(settings, shoppers=args.shoppers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashsale", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    api = roles.add_parser("api", help="serve the HTTP API (uvicorn)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int)
    api.set_defaults(func=run_api)
    roles.add_parser("admitter", help="admit waiting shoppers in batches").set_defaults(
        func=run_admitter
    )
    roles.add_parser("migrate", help="apply pending PostgreSQL migrations").set_defaults(
        func=run_migrate
    )
    demo = roles.add_parser("demo", help="run a local flash sale end to end")
    demo.add_argument("--shoppers", type=int, default=3000)
    demo.set_defaults(func=run_demo)
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
        return args.func(settings, args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
