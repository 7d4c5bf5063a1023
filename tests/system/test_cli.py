"""The `flashsale` command as people run it: a subprocess of the installed console script.

Whatever a person can fix ends with exactly one line on stderr that says what failed and
what to check, with credentials masked, and the exit code README's Commands section lists
for it (`flashsale.cli.EXIT_CODES`). Unreachable servers are free ports nobody listens on;
refusals come from the real PostgreSQL and from a private Redis that wants a password.
Processes of one test run side by side (each takes a second or two to start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from flashsale import cli
from flashsale.config import Settings
from flashsale.waiting_room.db import migration_files
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sale import Sale
from tests.support import REPO, free_port, redis_server

FLASHSALE = str(Path(sys.executable).parent / "flashsale")
SECRET = "s3cret-pw"
RUN_TIMEOUT = 60.0


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def one_line(self, code: int) -> str:
        """The single stderr line, once the exit code is `code` (and no password leaked)."""
        lines = self.stderr.strip().splitlines()
        assert (self.code, len(lines)) == (code, 1), (self.args, self.code, self.stderr)
        assert lines[0].startswith("flashsale"), lines
        assert SECRET not in self.stderr + self.stdout
        return lines[0]


def environment(settings: Settings, home: Path, **overrides: str) -> dict[str, str]:
    """The test's stores, schema and prefix; no Kubernetes credentials of the machine (no
    KUBECONFIG, a HOME without ~/.kube, not in a pod); no metrics or liveness port."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "KUBECONFIG" and not k.startswith(("KUBERNETES_", "FLASHSALE_"))
    }
    env.update(
        HOME=str(home),
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        FLASHSALE_REDIS_PREFIX=settings.redis_prefix,
        FLASHSALE_DATABASE_SCHEMA=settings.database_schema,
        FLASHSALE_METRICS_PORT="0",
        FLASHSALE_OPERATOR_LIVENESS="",
        FLASHSALE_LOG_JSON="true",
    )
    env.update(overrides)
    return env


async def run(env: dict[str, str], *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        FLASHSALE,
        *args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"flashsale {' '.join(args)} still runs after {RUN_TIMEOUT} s"
        ) from None
    assert proc.returncode is not None
    return Run(args, proc.returncode, out.decode(), err.decode())


async def run_all(env: dict[str, str], *commands: tuple[str, ...]) -> list[Run]:
    return list(await asyncio.gather(*(run(env, *command) for command in commands)))


def url_with(url: str, *, password: str | None = None, port: int | None = None) -> str:
    """`url` with another password and/or port (user, host and path kept)."""
    match = re.match(r"^(\w+://)([^:@/]*)(?::([^@/]*))?@([^:/]+)(?::(\d+))?(/.*)?$", url)
    if match is None:  # no user in the URL
        match = re.match(r"^(\w+://)()()([^:/]+)(?::(\d+))?(/.*)?$", url)
    assert match is not None, url
    scheme, user, old_password, host, old_port, path = match.groups()
    secret = old_password if password is None else password
    auth = f"{user}:{secret}@" if secret else (f"{user}@" if user else "")
    return f"{scheme}{auth}{host}:{port or old_port}{path or ''}"


@pytest.fixture
def env(settings: Settings, tmp_path: Path, database: None) -> dict[str, str]:
    return environment(settings, tmp_path)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on (and never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- arguments, settings, version ----------------------------------------------------------


async def test_version_is_the_installed_package_version(env: dict[str, str]) -> None:
    result = await run(env, "--version")
    assert (result.code, result.stdout, result.stderr) == (
        0,
        f"flashsale {version('flashsale')}\n",
        "",
    )


async def test_bad_arguments_and_settings_are_one_line_and_exit_2(env: dict[str, str]) -> None:
    commands = [
        (),
        ("frobnicate",),
        ("prewarm",),
        ("api", "--port", "eighty"),
        ("reconcile", "s", "--bogus"),
    ]
    runs = await run_all(env, *commands)
    lines = [r.one_line(cli.USAGE) for r in runs]
    assert (
        lines[0] == "flashsale: the following arguments are required: ROLE (see `flashsale --help`)"
    )
    assert lines[1].startswith("flashsale: argument ROLE: invalid choice: 'frobnicate'")
    assert lines[2] == (
        "flashsale prewarm: the following arguments are required: sale "
        "(see `flashsale prewarm --help`)"
    )
    assert lines[3] == (
        "flashsale api: argument --port: invalid int value: 'eighty' (see `flashsale api --help`)"
    )
    assert "unrecognized arguments: --bogus" in lines[4]

    settings_runs = await asyncio.gather(
        run({**env, "FLASHSALE_OPERATOR_TICK_SECONDS": "0"}, "operator"),
        run({**env, "FLASHSALE_PORT": "eighty"}, "api"),
        run({**env, "FLASHSALE_OPERATOR_LIVENESS": "https://0.0.0.0:8080/healthz"}, "operator"),
        run({**env, "DATABASE_URL": "postgresql://flashsale@127.0.0.1:notaport/db"}, "migrate"),
        run({**env, "REDIS_URL": "http://127.0.0.1:6379"}, "admitter"),
    )
    lines = [r.one_line(cli.USAGE) for r in settings_runs]
    assert lines[0] == "flashsale: FLASHSALE_OPERATOR_TICK_SECONDS must be positive"
    assert lines[1] == "flashsale: FLASHSALE_PORT='eighty' is not a valid int"
    assert lines[2].startswith("flashsale: FLASHSALE_OPERATOR_LIVENESS='https://0.0.0.0:8080")
    assert lines[3].startswith(
        "flashsale: DATABASE_URL=postgresql://flashsale@127.0.0.1:notaport/db is not a usable "
        "PostgreSQL URL"
    )
    assert lines[4].startswith(
        "flashsale: REDIS_URL=http://127.0.0.1:6379 is not a usable Redis URL"
    )


# -- PostgreSQL --------------------------------------------------------------------------------


async def test_postgresql_unreachable_every_role(settings: Settings, env: dict[str, str]) -> None:
    port = free_port()
    database_url = url_with(settings.database_url, password=SECRET, port=port)
    shown = url_with(settings.database_url, password="***", port=port)
    runs = await run_all(
        {**env, "DATABASE_URL": database_url},
        ("migrate",),
        ("prewarm", "some-sale"),
        ("reconcile", "some-sale"),
        ("admitter",),
        ("persister",),
        ("api", "--port", str(free_port())),
        ("operator",),
    )
    for result in runs:
        assert result.one_line(cli.POSTGRESQL) == (
            f"flashsale: cannot reach PostgreSQL at {shown} (connection refused); "
            "check DATABASE_URL"
        ), result.args


async def test_postgresql_refusals_say_which(settings: Settings, env: dict[str, str]) -> None:
    fresh_schema = f"{settings.database_schema}_never"
    wrong_password, no_database, unmigrated, unmigrated_role = await asyncio.gather(
        run({**env, "DATABASE_URL": url_with(settings.database_url, password=SECRET)}, "migrate"),
        run(
            {**env, "DATABASE_URL": settings.database_url.rsplit("/", 1)[0] + "/no_such_db"},
            "migrate",
        ),
        run({**env, "FLASHSALE_DATABASE_SCHEMA": fresh_schema}, "prewarm", "some-sale"),
        run({**env, "FLASHSALE_DATABASE_SCHEMA": fresh_schema}, "admitter"),
    )
    assert "refused the login (password authentication failed for user" in wrong_password.one_line(
        cli.POSTGRESQL
    )
    assert 'database "no_such_db" does not exist; create it or check DATABASE_URL' in (
        no_database.one_line(cli.POSTGRESQL)
    )
    assert unmigrated.one_line(cli.POSTGRESQL).endswith(
        'is not migrated (relation "sales" does not exist); run `flashsale migrate`'
    )
    versions = ", ".join(v for v, _ in migration_files())
    assert unmigrated_role.one_line(cli.POSTGRESQL).endswith(
        f"lacks migrations {versions}; run `flashsale migrate`"
    )
    assert f'schema "{fresh_schema}"' in unmigrated_role.stderr


# -- Redis -------------------------------------------------------------------------------------


async def test_redis_unreachable_every_role(make_sale: Any, env: dict[str, str]) -> None:
    sale: Sale = await make_sale()
    port = free_port()
    runs = await run_all(
        {**env, "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{port}/0"},
        ("prewarm", sale.id),
        ("reconcile", sale.id),
        ("admitter",),  # the long-running roles share their check of the stores
        ("operator",),
    )
    for result in runs:
        assert result.one_line(cli.REDIS) == (
            f"flashsale: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 "
            "(connection refused); check REDIS_URL"
        ), result.args


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis of this test's own that wants a password (the shared one has none)."""
    with redis_server(tmp_path, password=SECRET) as server:
        yield server.port


async def test_redis_refusing_the_login(env: dict[str, str], private_redis: int) -> None:
    runs = await run_all(
        {**env, "REDIS_URL": f"redis://:wrong-{SECRET}@127.0.0.1:{private_redis}/0"},
        ("admitter",),
        ("persister",),
    )
    for result in runs:
        line = result.one_line(cli.REDIS)
        assert line.startswith(
            f"flashsale: Redis at redis://:***@127.0.0.1:{private_redis}/0 refused the login ("
        ), line
        assert line.endswith("check REDIS_URL"), line


# -- what the maintenance commands answer --------------------------------------------------


async def test_prewarm_and_reconcile_exit_codes(
    make_sale: Any, env: dict[str, str], redis: Redis, room: WaitingRoom
) -> None:
    sale: Sale = await make_sale()

    cold = await run(env, "reconcile", sale.id)
    assert cold.code == cli.NOT_OK and cold.stderr == "", cold
    assert "redis: the sale is not warm" in json.loads(cold.stdout)["differences"]

    stream = room.keys(sale.id).orders_stream
    await redis.xadd(stream, {"order": "written by the test"})
    refused = await run(env, "reconcile", sale.id, "--repair")
    assert refused.one_line(cli.NOT_DRAINED) == (
        "flashsale: 1 entries unread and 0 pending; let the persister drain the stream first "
        "(or force)"
    )
    await redis.delete(stream)

    warmed = await run(env, "prewarm", sale.id)
    assert warmed.code == cli.OK and json.loads(warmed.stdout)["outcome"] == "ok", warmed
    again, missing, checked = await run_all(
        env, ("prewarm", sale.id), ("prewarm", "no-such-sale"), ("reconcile", sale.id)
    )
    assert again.code == cli.NOT_OK and json.loads(again.stdout)["outcome"] != "ok", again
    assert missing.one_line(cli.NO_SALE) == "flashsale: no sale 'no-such-sale'"
    assert checked.code == cli.OK and json.loads(checked.stdout)["ok"] is True, checked


# -- Kubernetes and ports ------------------------------------------------------------------


async def test_operator_without_kubernetes(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": SECRET}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    nothing, unreachable = await asyncio.gather(
        run(env, "operator"), run({**env, "KUBECONFIG": str(kubeconfig)}, "operator")
    )
    assert nothing.one_line(cli.KUBERNETES) == (
        "flashsale: no Kubernetes credentials: neither an in-cluster service account nor a "
        "kubeconfig (KUBECONFIG or ~/.kube/config) was found"
    )
    assert unreachable.one_line(cli.KUBERNETES) == (
        f"flashsale: cannot reach the Kubernetes API at https://127.0.0.1:{port} (connection "
        "refused); check KUBECONFIG (outside a cluster) or the pod's network"
    )


async def test_ports_taken(env: dict[str, str], listening: int) -> None:
    api, operator, admitter = await asyncio.gather(
        run(env, "api", "--host", "127.0.0.1", "--port", str(listening)),
        run(
            {**env, "FLASHSALE_OPERATOR_LIVENESS": f"http://127.0.0.1:{listening}/healthz"},
            "operator",
        ),
        run({**env, "FLASHSALE_METRICS_PORT": str(listening)}, "admitter"),
    )
    assert api.one_line(cli.CANNOT_LISTEN) == (
        f"flashsale: cannot listen on 127.0.0.1:{listening} for the API (address already in "
        "use); check FLASHSALE_PORT or --port"
    )
    assert operator.one_line(cli.CANNOT_LISTEN) == (
        f"flashsale: cannot listen on 127.0.0.1:{listening} for the liveness endpoint (address "
        "already in use); check FLASHSALE_OPERATOR_LIVENESS"
    )
    assert admitter.one_line(cli.CANNOT_LISTEN) == (
        f"flashsale: cannot listen on port {listening} for /metrics (address already in use); "
        "check FLASHSALE_METRICS_PORT"
    )


# -- interrupted, and a bug --------------------------------------------------------------------


async def test_ctrl_c_while_waiting_for_a_silent_redis(make_sale: Any, env: dict[str, str]) -> None:
    """A Redis that accepts the connection and never answers: prewarm waits; Ctrl-C ends it
    with one line and 130."""
    sale: Sale = await make_sale()
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the client's first command: it now waits for an answer
        connected.set()
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        proc = await asyncio.create_subprocess_exec(
            FLASHSALE,
            "prewarm",
            sale.id,
            env={**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        await asyncio.wait_for(connected.wait(), RUN_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    result = Run(("prewarm",), proc.returncode or 0, out.decode(), err.decode())
    assert result.one_line(cli.INTERRUPTED) == "flashsale: prewarm interrupted"


def test_a_bug_is_exit_70_with_the_traceback_logged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(settings: Settings, args: Any) -> int:
        raise RuntimeError("a bug in the migration runner")

    monkeypatch.setattr(cli, "run_migrate", broken)
    monkeypatch.setenv("FLASHSALE_LOG_JSON", "true")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli.main(["migrate"])
    finally:
        root.handlers[:], root.level = handlers, level
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == cli.BUG
    assert lines[-1] == (
        "flashsale: migrate failed unexpectedly (RuntimeError: a bug in the migration runner); "
        "this is a bug: the log line before this one has the traceback"
    )
    logged = json.loads(lines[-2])
    assert logged["level"] == "critical" and "Traceback" in logged["exc"]


def test_readme_lists_every_exit_code() -> None:
    """README's Commands section has a row `| N | meaning |` for each of EXIT_CODES."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+) \|$", section, re.MULTILINE))
    assert {int(k): v for k, v in rows.items()} == cli.EXIT_CODES
