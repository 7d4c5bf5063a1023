"""What a script with no identity and many fresh cookies from one address gets, measured
against a real API process (default join limits): loadtest/scripted_joins.py, scaled down to
2,000 joins per scenario to keep the suite short (SCRIPTED_JOINS=10000 runs the full figure of
docs/waiting-room.md). Asserts the bounds, never speed; the figures (places won, CPU per place)
go to reports/scripted-joins.json and the test's output."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

from flashsale.config import Settings
from loadtest.scripted_joins import run
from tests.support import ADMIN_TOKEN, REPO
from tests.support.identity import AUDIENCE, ISSUER, Issuer
from tests.support.processes import api_process

JOINS = int(os.environ.get("SCRIPTED_JOINS", "2000"))
SOLVED = 20


async def test_fresh_cookies_from_one_address_win_a_bounded_priced_number_of_places(
    settings: Settings, database: None, tmp_path: Path
) -> None:
    issuer = Issuer()
    issuer.new_key("key-1")
    served = replace(
        settings,
        join_limit_per_visitor=Settings.join_limit_per_visitor,
        join_limit_per_address=Settings.join_limit_per_address,
        rate_window_seconds=Settings.rate_window_seconds,
        identity_jwks_file=str(issuer.write(tmp_path / "jwks.json")),
        identity_issuer=ISSUER,
        identity_audience=AUDIENCE,
    )
    with api_process(served, "scripted-joins-api.log") as url:
        result = await run(
            url,
            ADMIN_TOKEN,
            joins=JOINS,
            solved=SOLVED,
            identity_token=issuer.token("one-human"),
            address_limit=served.join_limit_per_address,
            window_s=served.rate_window_seconds,
        )
    report = REPO / "reports" / "scripted-joins.json"
    report.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))

    limit = served.join_limit_per_address
    anonymous = result["anonymous"]
    # without a price, the per-address limit is the only bound: and it holds
    assert limit <= anonymous["places"] <= anonymous["bound"], anonymous
    assert anonymous["statuses"]["429"] == JOINS - anonymous["places"]

    priced = result["proof_of_work"]
    assert priced["places"] == SOLVED  # each solution bought a place
    assert priced["unsolved"]["places"] == 0  # no solution, no place, whatever the cookie
    assert set(priced["unsolved"]["statuses"]) <= {"403", "429"}
    assert priced["cpu_seconds_per_place"] > 0 and priced["hashes_per_second"] > 0
    assert math.isclose(
        priced["cpu_seconds_for_all_joins"], JOINS * priced["cpu_seconds_per_place"], abs_tol=1
    )

    identity = result["identity"]
    assert identity["without_token"]["places"] == 0
    assert identity["without_token"]["statuses"] == {"401": JOINS // 10}
    assert identity["one_subject"]["places"] == 1  # ten thousand cookies, one human, one place
