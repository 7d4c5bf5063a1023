"""A short flash-sale spike inside the test suite: `loadtest/spike.py` with a few hundred
shoppers for a few seconds, through HAProxy, against real API workers, an admitter and a
persister. It asserts the invariants (nothing oversold, no seat sold twice, every confirmed
purchase durable exactly once, the stream drained, admission in queue order, the ingress's rate
limit answering 429), never speed: the machine is small and shared.

Needs Debian's `haproxy` and the `loadtest` extra (locust): skipped without them, except on CI
(CI=true), where their absence is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flashsale.config import Settings
from tests.support import REPO


def _missing() -> list[str]:
    missing = []
    if not (shutil.which("haproxy") or os.access("/usr/sbin/haproxy", os.X_OK)):
        missing.append("haproxy (apt-get install haproxy)")
    for module, extra in (("locust", "locust"), ("matplotlib", "matplotlib")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{extra} (pip install -e '.[loadtest]')")
    return missing


def test_a_short_spike_keeps_every_invariant(settings: Settings, tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        message = f"the spike needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}: CI must install them")
        pytest.skip(message)
    run = f"{os.getpid()}{secrets.token_hex(2)}"
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [
        sys.executable,
        "-m",
        "loadtest.spike",
        "--seconds",
        "8",
        "--users",
        "200",
        "--spawn-rate",
        "200",
        "--lead",
        "3",
        "--stock",
        "120",
        "--seats",
        "100",
        "--hold-seconds",
        "10",
        "--api-workers",
        "1",
        "--prefix",
        f"spiketest{run}",
        "--schema",
        f"fs_spiketest_{run}",
        "--report-root",
        str(tmp_path),
        "--settle-seconds",
        "25",
        "--no-install",
        "--cleanup",
    ]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{done.stderr[-3000:]}"
    out = json.loads(lines[-1])
    context = (
        f"{out.get('error')} {out.get('failed_checks')}\n{done.stdout[-1500:]}\n"
        f"{done.stderr[-2500:]}"
    )
    assert out["invariants_ok"], context
    assert done.returncode == 0, context
    assert out["oversold"] == 0 and out["seats_double_sold"] == 0, context
    assert out["lost_orders"] == 0, context
    assert out["stream_lag"] == 0 and out["stream_pending"] == 0, context
    assert out["admission_order_ok"], context
    assert out["stock"] == 220 and 0 < out["sold"] <= out["stock"], context
    assert out["confirmed_seen"] > 0 and out["joined"] >= 100, context
    assert out["failures"] == 0, (Path(out["report"]) / "locust_failures.csv").read_text()
    assert out["rate_limited_429"] > 0, "the ingress never answered 429 to the scraper"
    report = Path(out["report"])
    assert (report / "report.md").exists() and (report / "locust_stats.csv").exists()
    assert (report / "locust.html").exists(), "locust's HTML report is kept beside ours"
    assert {p.name for p in report.glob("*.png")} >= {
        "arrivals.png",
        "waiting.png",
        "admitted.png",
        "sold.png",
        "latency.png",
    }
