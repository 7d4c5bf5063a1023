"""Facts the cluster tests establish, gathered into one JSON file for `make cluster-check`.

A test records a fact only once it has asserted it, so the summary never claims more than was
shown. Any test group can take part: import `cluster_facts` into its conftest.py and call
`cluster_facts.record("name", value)` (or `.add("name", n)` to count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# scripts/cluster_check.py points this at the file it reads; a plain pytest run writes here
FACTS_ENV = "FLASHSALE_CLUSTER_FACTS"
DEFAULT_FILE = REPO / ".run" / "cluster-facts.json"


class Facts:
    """A JSON object on disk, rewritten on every change (a crashed session keeps what it had
    shown until then)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.values: dict[str, Any] = {}
        self._save()  # a new session starts from nothing: no fact of an earlier run survives

    def record(self, name: str, value: Any) -> None:
        self.values[name] = value
        self._save()

    def add(self, name: str, count: int = 1) -> None:
        self.values[name] = int(self.values.get(name, 0)) + count
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.values, indent=2, sort_keys=True))
        tmp.replace(self.path)


@pytest.fixture(scope="session")
def cluster_facts() -> Iterator[Facts]:
    path = Path(os.environ.get(FACTS_ENV) or DEFAULT_FILE)
    yield Facts(path)
