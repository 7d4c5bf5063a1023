"""`make cluster-check`: run the tests against the real control plane and the built image, and
end with one JSON line.

The line holds the facts the tests established (tests/support/facts.py: a test records a fact
only after asserting it), e.g. {"apiserver": "v1.37.2", "crd_accepted": true,
"bad_specs_refused": 20, "chart_scenarios_installed": 5, "operator_phases": [...],
"rbac_ok": true, "image_built": true, "image_mb": 187.0, "image_operator_status": "Scheduled",
..., "passed": true, "seconds": 300.1}. The test groups are chosen by CLUSTER_CHECK_MARKERS
(default "kubernetes or image": tests/kubernetes and tests/image share one control plane);
others add theirs by recording into the same `cluster_facts` fixture and being selected here.
Exit status: pytest's (non-zero if a test failed).

    scripts/cluster_check.py [pytest options...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FACTS = REPO / ".run" / "cluster-facts.json"


def main(argv: list[str]) -> int:
    markers = os.environ.get("CLUSTER_CHECK_MARKERS", "kubernetes or image")
    FACTS.parent.mkdir(parents=True, exist_ok=True)
    FACTS.unlink(missing_ok=True)
    started = time.monotonic()
    # pytest's report goes to stderr, so that the JSON line is stdout's only line
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", markers, "-q", *argv],
        cwd=REPO,
        env={**os.environ, "FLASHSALE_CLUSTER_FACTS": str(FACTS)},
        stdout=sys.stderr,
        check=False,
    )
    facts = json.loads(FACTS.read_text()) if FACTS.exists() else {}
    facts["passed"] = result.returncode == 0
    facts["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(facts, sort_keys=True), flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
