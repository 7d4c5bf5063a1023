"""The API as a real process (uvicorn, one worker) for tests that go over TCP: the browser
tests, the scripted-joins measurement."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

import httpx

from flashsale.config import Settings
from tests.support import REPO, free_port


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make `Settings.from_env()` give back `settings`."""
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        name = f.metadata["setting"].env
        env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


@contextmanager
def api_process(settings: Settings, log_name: str) -> Iterator[str]:
    """The API serving `settings` on a free port of 127.0.0.1 while the block runs; its
    output goes to reports/<log_name>."""
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "FLASHSALE_LOG_LEVEL": "WARNING",
        "FLASHSALE_LOG_JSON": "false",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = REPO / "reports" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "flashsale.wiring:api_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the API exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
