"""Local Redis Clusters for the tests, and the core's services on them.

`scripts/redis-cluster.sh` starts clusters from Debian's redis-server on free ports, under
`.run/`. The shared one (`make redis-cluster`, REDIS_CLUSTER_URL) is only ever read and written
under a test's own key prefix; a test that kills, pauses or reshards nodes starts a cluster of
its own."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from flashsale.config import Settings
from flashsale.waiting_room.redis_client import connect_redis, node_of, remove_matching
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.sales import Sales
from flashsale.waiting_room.services import Services
from flashsale.waiting_room.tokens import Signer
from tests.support import REPO, Clock

SCRIPT = REPO / "scripts" / "redis-cluster.sh"
SHARED = REPO / ".run" / "redis-cluster"


@dataclass(frozen=True)
class LocalCluster:
    directory: Path
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def cli(self, port: int, *args: str) -> str:
        """`redis-cli -p PORT ARGS...`: the node's answer as text."""
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def pid(self, port: int) -> int:
        return int((self.directory / f"{port}.pid").read_text())

    def kill(self, port: int) -> None:
        """kill -9 the node's redis-server."""
        os.kill(self.pid(port), signal.SIGKILL)

    def pause(self, port: int) -> None:
        """Stop the node's process (SIGSTOP): it keeps its connections and answers nothing."""
        os.kill(self.pid(port), signal.SIGSTOP)

    def resume(self, port: int) -> None:
        os.kill(self.pid(port), signal.SIGCONT)

    def node_id(self, port: int) -> str:
        return self.cli(port, "cluster", "myid")

    def port_of(self, address: str) -> int:
        """The port of a `host:port` address."""
        return int(address.rsplit(":", 1)[1])

    def wait(self, within: float, ready: Callable[[], bool]) -> None:
        """Until `ready()` (a cluster settling after a kill or a reshard)."""
        deadline = time.monotonic() + within
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster in {self.directory} did not settle")
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=True, timeout=60)


def start_cluster(directory: Path, masters: int = 3, replicas: int = 0) -> LocalCluster:
    """A cluster in `directory` (the one there, if it still answers)."""
    subprocess.run(
        [str(SCRIPT), "start", str(directory), str(masters), str(replicas)],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    ports = tuple(int(p) for p in (directory / "ports").read_text().split())
    return LocalCluster(directory, ports)


def shared_cluster_url() -> str:
    """The shared test cluster: REDIS_CLUSTER_URL (`make test` sets it), else the one
    `make redis-cluster` keeps in .run/redis-cluster, started now if it is not running."""
    return os.environ.get("REDIS_CLUSTER_URL") or start_cluster(SHARED).url


@contextlib.contextmanager
def private_cluster(masters: int = 3, replicas: int = 0) -> Iterator[LocalCluster]:
    """A cluster of the test's own (to kill, pause or reshard), stopped afterwards."""
    cluster = start_cluster(REPO / ".run" / f"cluster-{secrets.token_hex(4)}", masters, replicas)
    try:
        yield cluster
    finally:
        cluster.stop()
        for leftover in cluster.directory.iterdir():
            leftover.unlink()
        cluster.directory.rmdir()


@contextlib.asynccontextmanager
async def services_on(
    url: str, settings: Settings, pool: asyncpg.Pool, clock: Clock, **overrides: Any
) -> AsyncIterator[Services]:
    """The core's services on the cluster at `url` (settings `overrides` applied); its keys
    under the session's prefix are removed afterwards (when it still answers)."""
    on = replace(settings, redis_url=url, redis_cluster="true", **overrides)
    redis = connect_redis(on, cluster=True)
    raw_redis = connect_redis(on, cluster=True, decode=False)
    room = WaitingRoom(redis, on, Signer(on.signing_keys()), clock=clock)
    services = Services.build(
        on, redis, raw_redis, pool, room=room, sales=Sales(pool, room, clock=clock.now)
    )
    try:
        yield services
    finally:
        with contextlib.suppress(Exception):  # a cluster the test broke may not answer
            await remove_matching(redis, f"{on.redis_prefix}:*")
        await room.scripts.pipeline().aclose()
        await redis.aclose()
        await raw_redis.aclose()


async def sale_id_on(services: Services, node: str) -> str:
    """A fresh sale id whose keys live on the primary `node` (`host:port`)."""
    while True:
        sale_id = f"t-{secrets.token_hex(6)}"
        if await node_of(services.redis, services.room.keys(sale_id).meta) == node:
            return sale_id


async def command_stat(node: str, command: str, field: str = "calls") -> int:
    """How many times the node `host:port` ran `command`, from INFO commandstats (`field`
    `rejected_calls`: how many it refused with MOVED, ASK or TRYAGAIN)."""
    host, port = node.rsplit(":", 1)
    redis = Redis(host=host, port=int(port))
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get(field, 0))
