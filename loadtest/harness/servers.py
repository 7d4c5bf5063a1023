"""A Redis and a PostgreSQL of a run's own: `redis-server` and an `initdb` cluster on free
ports, data under the run's folder, started and stopped as children of the harness, so a chaos
run can kill -9 them, stall them with SIGSTOP and start them again without touching any other
server on the machine."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from loadtest.harness.processes import Procs, child_env, ensure_tool, free_port, log


class PrivateRedis:
    """`redis-server` on a free port, listening on 127.0.0.1 and `also` (the host's end of a
    network namespace), persisting with an append-only file when `aof`."""

    name = "redis"

    def __init__(self, procs: Procs, folder: Path, also: Sequence[str] = ()) -> None:
        binary = ensure_tool("redis-server", "redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing (Debian package redis-server)")
        self.binary = binary
        self.procs = procs
        self.folder = folder
        self.port = free_port()
        self.binds = ["127.0.0.1", *also]
        self.aof = True

    def url(self, host: str = "127.0.0.1") -> str:
        return f"redis://{host}:{self.port}/0"

    def start(self, *, aof: bool | None = None, within: float = 20) -> None:
        """Start it (again), from what its append-only file kept when `aof`, else empty."""
        if aof is not None:
            self.aof = aof
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.aof:  # without persistence a restart starts from nothing
            shutil.rmtree(self.folder / "appendonlydir", ignore_errors=True)
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            *self.binds,
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "no",
            "--maxclients",
            "2000",
        ]
        self.procs.start(self.name, argv, child_env({}))
        asyncio.run(self._wait(within))

    async def _wait(self, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            self.procs.check(self.name)
            client = Redis.from_url(self.url(), socket_timeout=1)
            try:
                # loading an append-only file answers LOADING until done
                if await client.ping():
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            finally:
                await client.aclose()
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        self.procs.kill(self.name)

    def pause(self) -> None:
        self.procs.signal(self.name, signal.SIGSTOP)

    def resume(self) -> None:
        self.procs.signal(self.name, signal.SIGCONT)


def postgres_bin(tool: str) -> str:
    """A PostgreSQL server program (initdb, postgres): on PATH, or the newest of Debian's."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(f"{tool} is missing (Debian package postgresql)")
    return candidates[-1]


class PrivatePostgres:
    """A PostgreSQL cluster made with `initdb` under the run's folder, on a free port,
    listening on 127.0.0.1 and `also`, trusting local connections (it lives as long as the
    run). As root, the server runs as the `postgres` user (it refuses to run as root), so
    `folder` must be in a place that user can reach (a folder of /tmp, say)."""

    name = "postgres"
    database = "flashsale"

    def __init__(self, procs: Procs, folder: Path, also: Sequence[str] = ()) -> None:
        self.procs = procs
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.listen = ["127.0.0.1", *also]
        self.user = "postgres" if os.geteuid() == 0 else None

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{self.database}"

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.folder, self.user)
        made = subprocess.run(
            [
                postgres_bin("initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=self.user,
        )
        if made.returncode:
            raise RuntimeError(f"initdb failed: {made.stderr[-800:] or made.stdout[-800:]}")
        with (self.data / "pg_hba.conf").open("a") as hba:
            for address in self.listen[1:]:
                network = ".".join(address.split(".")[:3]) + ".0/24"
                hba.write(f"host all all {network} trust\n")
        self.start()
        asyncio.run(self._create_database())

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    def start(self, within: float = 30) -> None:
        """Start the server (again: after a kill it recovers from its write-ahead log)."""
        argv = [
            postgres_bin("postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={','.join(self.listen)}",
            "-c",
            f"unix_socket_directories={self.folder}",
            "-c",
            "fsync=off",  # a killed server, not a crashed machine: the page cache survives
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
        ]
        self.procs.start(self.name, argv, child_env({}), cwd=self.folder, user=self.user)
        asyncio.run(self._wait(within))

    async def _wait(self, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            self.procs.check(self.name)
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=2
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    def kill(self) -> None:
        """Stopped hard: the postmaster and every backend killed at once, as a crash would."""
        self.procs.kill(self.name)
        log("postgres killed")

    def pause(self) -> None:
        self.procs.signal(self.name, signal.SIGSTOP)

    def resume(self) -> None:
        self.procs.signal(self.name, signal.SIGCONT)
