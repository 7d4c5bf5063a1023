"""A short chaos run inside the test suite: `loadtest/chaos.py --short` (a few faults: kill -9
of an API process, of a persister with a backlog, of Redis with AOF on; PostgreSQL stopped
hard for 15 s) against a Redis and a PostgreSQL of its own, two API processes behind HAProxy,
an admitter and a persister. It asserts the invariants after every fault (nothing oversold,
no seat twice, every purchase a shopper saw confirmed exactly one confirmed order, no order
left unsettled, the stream drained, reconcile clean), never a time.

Needs Debian's `haproxy`, `redis-server` and PostgreSQL's server programs: skipped without
them, except on CI (CI=true), where their absence is a failure.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


def _missing() -> list[str]:
    missing = []
    for tool, package in (("haproxy", "haproxy"), ("redis-server", "redis-server")):
        if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)):
            missing.append(f"{tool} (apt-get install {package})")
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        missing.append("initdb (apt-get install postgresql)")
    return missing


def test_a_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        message = f"the chaos run needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}: CI must install them")
        pytest.skip(message)
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "loadtest.chaos", "--short", "--report-root", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{done.stderr[-3000:]}"
    out = json.loads(lines[-1])
    context = f"{json.dumps(out.get('per_fault'), indent=1)}\n{done.stderr[-3000:]}"
    assert out["faults"] == 4, context
    assert out["oversold"] == 0, context
    assert out["lost_confirmed"] == 0, context
    assert out["duplicated"] == 0, context
    assert out["stuck"] == 0, context
    assert out["invariants_ok"], context
    assert done.returncode == 0, context
    report = Path(out["report"])
    text = (report / "report.md").read_text()
    for fault in ("api-kill9", "persister-kill9-backlog", "redis-kill9-aof", "postgres-down"):
        assert fault in text
    assert list(report.glob("fault-*.png")), "a plot over time per fault"
