"""`flashsale demo` end to end, small: the real CLI starts the real API, admitter and persister
against real Redis and PostgreSQL, under a Redis prefix and a PostgreSQL schema of its own (so
no other admitter or persister sees its sale, and its own see no one else's), removed
afterwards. The shoppers hold, pay, get declined, cancel and walk away from holds; the demo
squares what they saw with PostgreSQL and fails unless everything agrees."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys

from flashsale.config import Settings
from flashsale.waiting_room.keys import SaleKeys
from flashsale.waiting_room.redis_client import node_of, open_redis, primaries
from loadtest.harness.store import drop_install

SHOPPERS = 150
# ~30 s normally: 6 s to the opening, 10 s of arrivals, start-up, then the last unpaid holds
# expire (10 s) and the persister drains
TIMEOUT_S = 90


def _run_demo(env: dict[str, str]) -> tuple[int, str, str]:
    """Run the demo; on timeout SIGTERM it first, so it stops the API, the admitter and the
    persister it started (they run in their own sessions and would outlive a SIGKILL of the
    demo)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.demo", "--shoppers", str(SHOPPERS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n(demo timed out after {TIMEOUT_S} s)"
    return proc.returncode, out, err


async def test_demo_runs_a_small_sale() -> None:
    run = secrets.token_hex(3)
    settings = Settings.from_env(
        redis_prefix=f"fstestdemo{run}", database_schema=f"fstest_demo_{run}"
    )
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
        "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
        "FLASHSALE_LOG_LEVEL": "WARNING",
    }
    try:
        code, out, err = await asyncio.to_thread(_run_demo, env)
    finally:
        await drop_install(settings)
    context = f"exit {code}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
    lines = out.strip().splitlines()
    assert lines, context
    figures = json.loads(lines[-1])
    assert figures["shoppers"] == SHOPPERS, context
    assert figures["admitted"] > 0, context
    assert figures["max_active_seen"] <= figures["max_active"], context
    assert figures["errors"] == 0, context
    # purchases, squared with PostgreSQL once the persister drained
    assert figures.get("sold", 0) > 0, context
    assert figures.get("oversold") == 0, context
    assert figures.get("orders_in_db") == figures["sold"], context
    assert figures["sold"] <= figures["stock"], context
    assert figures.get("reconcile_ok") is True, context
    assert figures.get("persister_drained") is True, context
    assert code == 0, context  # every check of the demo passed
    # on a Redis Cluster (make test's second pass), the demo's sale lives off the first shard
    redis = await open_redis(settings)
    try:
        nodes = await primaries(redis)
        key = SaleKeys(settings.redis_prefix, figures["sale"], settings.join_buckets).meta
        assert len(nodes) == 1 or await node_of(redis, key) != nodes[0], context
    finally:
        await redis.aclose()
