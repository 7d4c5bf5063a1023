"""`flashsale ROLE`: one command, one image, every role (api, admitter, persister, migrate,
prewarm, reconcile, operator). The top layer: it may import every other.

Whatever goes wrong that a person can fix (a bad argument or setting, a store that does not
answer or refuses the login, a schema not migrated, no Kubernetes credentials, a port taken)
ends the command with ONE line on stderr saying what failed and what to check, credentials
masked, and an exit code of its own (EXIT_CODES, listed in README's Commands section). Only a
bug gets a traceback (logged), with exit code 70. The long-running roles check their stores
before they start, so a wrong URL fails at once instead of as a log line every tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Iterator, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from flashsale.config import Settings, SettingsError
from flashsale.logs import reason, setup_logging

log = logging.getLogger("flashsale")
T = TypeVar("T")

OK = 0
NOT_OK = 1
USAGE = 2
NOT_DRAINED = 3
NO_SALE = 4
POSTGRESQL = 5
REDIS = 6
KUBERNETES = 7
CANNOT_LISTEN = 8
BUG = 70
INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    OK: "done",
    NOT_OK: "done, and the answer is no: `reconcile` found the stores differ, `prewarm` did "
    "not load the stock (the JSON printed says why)",
    USAGE: "a bad argument or setting (the line names it)",
    NOT_DRAINED: "`reconcile --repair` refused: order entries still wait to reach PostgreSQL "
    "(`--force` to repair anyway)",
    NO_SALE: "no sale with that id",
    POSTGRESQL: "PostgreSQL does not answer, refuses the login, lacks the database, or the "
    "schema is not migrated (run `flashsale migrate`)",
    REDIS: "Redis does not answer or refuses the login",
    KUBERNETES: "`operator`: no Kubernetes credentials, the API server does not answer, or "
    "the peering object is missing",
    CANNOT_LISTEN: "a port to listen on is taken or not allowed (`FLASHSALE_PORT` or `--port`, "
    "`FLASHSALE_METRICS_PORT`, `FLASHSALE_OPERATOR_LIVENESS`)",
    BUG: "a bug: the log line before it has the traceback",
    INTERRUPTED: "stopped by Ctrl-C",
}


class Failure(Exception):
    """Ends the command with `code` and this one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def masked(url: str) -> str:
    """A URL fit to print: the password (in the authority or a `password=` parameter) is
    replaced by ***."""
    url = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it (explicitly or while handling), and the members of an
    exception group, each once."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _raised_in(error: BaseException, module: str) -> bool:
    """Whether the error passed through the code of `module` or its submodules (an OSError
    of a connection says nothing of whose connection it was)."""
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", ""))
        if name == module or name.startswith(module + "."):
            return True
        tb = tb.tb_next
    return False


def explain(error: BaseException, settings: Settings) -> tuple[int, str] | None:
    """(exit code, one line) for a failure a person can fix; None for a bug."""
    import asyncpg
    import redis.exceptions as rx

    # only the operator raises it: its (heavy) module is loaded once the operator ran
    kube = sys.modules.get("flashsale.operator.kube")
    db, schema, store = (
        masked(settings.database_url),
        settings.database_schema,
        masked(settings.redis_url),
    )
    for exc in _causes(error):
        if isinstance(exc, Failure):
            return exc.code, exc.message
        if kube is not None and isinstance(exc, kube.KubeUnavailable):
            return KUBERNETES, str(exc)
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return POSTGRESQL, (
                f"PostgreSQL at {db} refused the login ({exc}); check the user and password "
                "in DATABASE_URL"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return POSTGRESQL, f"PostgreSQL at {db}: {exc}; create it or check DATABASE_URL"
        if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
            return POSTGRESQL, (
                f'PostgreSQL schema "{schema}" at {db} is not migrated ({exc}); run '
                "`flashsale migrate`"
            )
        if isinstance(exc, asyncpg.ConnectionDoesNotExistError | asyncpg.ConnectionFailureError):
            return POSTGRESQL, f"lost the connection to PostgreSQL at {db} ({exc}); check it runs"
        if isinstance(exc, asyncpg.PostgresError):
            return POSTGRESQL, f"PostgreSQL at {db} refused: {exc}"
        if isinstance(exc, rx.AuthenticationError) or (
            isinstance(exc, rx.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))
        ):
            return REDIS, f"Redis at {store} refused the login ({exc}); check REDIS_URL"
        if isinstance(exc, rx.ConnectionError | rx.TimeoutError):
            return REDIS, f"cannot reach Redis at {store} ({reason(exc)}); check REDIS_URL"
        if isinstance(exc, rx.RedisError):
            return REDIS, f"Redis at {store} refused: {exc}"
        for package, name, setting, url, code in (
            ("asyncpg", "PostgreSQL", "DATABASE_URL", db, POSTGRESQL),
            ("redis", "Redis", "REDIS_URL", store, REDIS),
        ):
            if isinstance(exc, OSError | TimeoutError) and _raised_in(exc, package):
                return code, f"cannot reach {name} at {url} ({reason(exc)}); check {setting}"
        # the URL itself, refused where the clients parse it (not a bad query argument,
        # which asyncpg also reports as a ValueError)
        for module, name, setting, url in (
            ("asyncpg.connect_utils", "PostgreSQL", "DATABASE_URL", db),
            ("redis.asyncio.connection", "Redis", "REDIS_URL", store),
        ):
            if isinstance(exc, ValueError | asyncpg.ClientConfigurationError) and _raised_in(
                exc, module
            ):
                return USAGE, f"{setting}={url} is not a usable {name} URL ({exc})"
    return None


def _fail(code: int, message: str) -> int:
    print(f"flashsale: {message}", file=sys.stderr)
    return code


def _listen_failure(error: OSError, what: str, setting: str) -> Failure:
    return Failure(CANNOT_LISTEN, f"cannot listen on {what} ({reason(error)}); check {setting}")


def check_port(host: str, port: int, what: str, setting: str) -> None:
    """Fail with one line when a port this role will listen on is taken, before the role
    starts (uvicorn and kopf find out late, and say it with exit code 3 or a page of
    tracebacks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            probe.bind((host, port))
    except OSError as error:
        raise _listen_failure(error, f"{host}:{port} for {what}", setting) from error


def _check_ports(settings: Settings, args: argparse.Namespace) -> None:
    if args.role == "api":
        host, port = args.host or settings.host, args.port or settings.port
        check_port(host, port, "the API", "FLASHSALE_PORT or --port")
    elif args.role == "operator" and settings.operator_liveness:
        host, port = settings.liveness_address()
        check_port(host, port, "the liveness endpoint", "FLASHSALE_OPERATOR_LIVENESS")


def _version() -> str:
    try:
        return package_version("flashsale")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (it prints the whole usage first otherwise)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


API_APP = "flashsale.wiring:api_app"
SERVERS = ("uvicorn", "granian")  # the first is the default: docs/performance.md
GRACE_SECONDS = 20  # in-flight requests get this long to finish on SIGTERM
BACKLOG = 4096


def run_api(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the API (or, for the benchmarks, another app: `--app`) with the HTTP server
    chosen by `--server` (uvicorn unless told; granian, from the `loadtest` extra, is there
    to be measured against it: docs/performance.md).
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


def interruptible(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, where Ctrl-C (SIGINT) goes through the event loop's signal handling (a
    wake-up fd): it then cancels a wait at once, even when the signal lands on a helper
    thread (asyncio resolves host names in one), where asyncio.run's own handler would only
    run once the main thread woke up by itself (a Redis timeout later)."""
    interrupted = False

    async def main() -> T:
        nonlocal interrupted
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupt)
        return await work

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise


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
    try:
        start_http_server(settings.metrics_port, registry=registry)
    except OSError as error:
        raise _listen_failure(
            error, f"port {settings.metrics_port} for /metrics", "FLASHSALE_METRICS_PORT"
        ) from error


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
        result = interruptible(_prewarm(settings, args.sale, args.force))
    except SaleNotFound:
        return _fail(NO_SALE, f"no sale {args.sale!r}")
    print(json.dumps(result))
    return OK if result["outcome"] == "ok" else NOT_OK


async def _reconcile(settings: Settings, sale_id: str, repair: bool, force: bool) -> dict[str, Any]:
    from flashsale.wiring import opened

    async with opened(settings, pool_size=4) as services:
        sale = await services.sales.get(sale_id)
        return (await services.stock.reconcile(sale, repair=repair, force=force)).as_dict()


def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.waiting_room.sales import SaleNotFound
    from flashsale.waiting_room.stock import NotDrained

    try:
        report = interruptible(_reconcile(settings, args.sale, args.repair, args.force))
    except SaleNotFound:
        return _fail(NO_SALE, f"no sale {args.sale!r}")
    except NotDrained as exc:
        return _fail(NOT_DRAINED, str(exc))
    print(json.dumps(report, indent=2))
    return OK if report["ok"] else NOT_OK


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.waiting_room.db import migrate

    applied = interruptible(migrate(settings))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return OK


def run_operator(settings: Settings, args: argparse.Namespace) -> int:
    from flashsale.operator.main import serve
    from flashsale.wiring import opened

    async def operate() -> None:
        async with opened(settings, pool_size=4) as services:
            await serve(services)

    asyncio.run(operate())
    return OK


async def _check_stores(settings: Settings) -> None:
    """Before a long-running role starts: PostgreSQL answers and its schema has every
    migration, Redis answers. Each failure raises what `explain` turns into one line."""
    import asyncpg

    from flashsale.waiting_room.db import migration_files
    from flashsale.wiring import opened

    async with opened(settings, pool_size=1) as services:
        try:
            rows = await services.pool.fetch("SELECT version FROM schema_migrations")
        except asyncpg.UndefinedTableError:
            rows = []
        done = {row["version"] for row in rows}
        missing = [version for version, _ in migration_files() if version not in done]
        if missing:
            raise Failure(
                POSTGRESQL,
                f'PostgreSQL schema "{settings.database_schema}" at '
                f"{masked(settings.database_url)} lacks migrations {', '.join(missing)}; run "
                "`flashsale migrate`",
            )
        await services.redis.ping()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flashsale",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: "
        + "; ".join(f"{code} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"flashsale {_version()}")
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    # long-running roles check their stores before they start (`check_stores`)
    api = roles.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int)
    api.add_argument("--server", choices=SERVERS, help=f"HTTP server (default: {SERVERS[0]})")
    api.add_argument("--app", help=argparse.SUPPRESS)  # loadtest/serve.py: another app
    api.set_defaults(func=run_api, check_stores=True)
    roles.add_parser("admitter", help="admit waiting shoppers in batches").set_defaults(
        func=run_admitter, check_stores=True
    )
    roles.add_parser(
        "persister", help="write orders from Redis to PostgreSQL; expire holds"
    ).set_defaults(func=run_persister, check_stores=True)
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
    ).set_defaults(func=run_operator, check_stores=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(USAGE, str(exc))
    setup_logging(settings.log_level, settings.log_json)
    try:
        if getattr(args, "check_stores", False):
            _check_ports(settings, args)
            interruptible(_check_stores(settings))
        code: int = args.func(settings, args)
        return code
    except KeyboardInterrupt:
        return _fail(INTERRUPTED, f"{args.role} interrupted")
    except Exception as error:
        known = explain(error, settings)
        if known is not None:
            return _fail(*known)
        log.critical("flashsale %s failed", args.role, exc_info=error)
        return _fail(
            BUG,
            f"{args.role} failed unexpectedly ({type(error).__name__}: {error}); this is a bug: "
            "the log line before this one has the traceback",
        )


if __name__ == "__main__":
    sys.exit(main())
