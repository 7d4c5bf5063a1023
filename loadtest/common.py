"""The names `loadtest/bench.py` imports, from the harness where each is written once
(`loadtest/harness/processes.py`, `loadtest/harness/store.py`)."""

from loadtest.harness.processes import (
    ROOT,
    Procs,
    child_env,
    cpu_seconds,
    ensure_services,
    ensure_tool,
    free_port,
    install_env,
    log,
    pinned,
    processes,
    wait_port,
)
from loadtest.harness.store import drop_install

__all__ = [
    "ROOT",
    "Procs",
    "child_env",
    "cpu_seconds",
    "drop_install",
    "ensure_services",
    "ensure_tool",
    "free_port",
    "install_env",
    "log",
    "pinned",
    "processes",
    "wait_port",
]
