"""`flashsale api` as it runs in production (uvicorn, two workers, this session's Redis and
PostgreSQL), over real TCP: the address the join rate limits see under forged X-Forwarded-For
chains, and the JSON errors for what the HTTP server refuses before the app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashsale.api.app import YOUNG_GENERATION
from flashsale.config import Settings
from tests.support import ADMIN_TOKEN, REPO, free_port, sale_body

LIMIT = 3  # joins per address per rate window


def settings_env(settings: Settings, **more: str) -> dict[str, str]:
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        name = f.metadata["setting"].env
        env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    env.update(more)
    return env


@contextmanager
def serving(settings: Settings, **env: str) -> Iterator[str]:
    """`flashsale api --workers 2` on a free port with `settings` (and more FLASHSALE_*
    variables): its URL once it is ready; stopped (SIGTERM) afterwards."""
    port = free_port()
    environ = {**os.environ, **settings_env(settings, FLASHSALE_LOG_LEVEL="ERROR", **env)}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "flashsale.cli", "api", "--workers", "2", "--port", str(port)]
    process = subprocess.Popen(
        argv, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def api(settings: Settings, database: None) -> Iterator[str]:
    with serving(
        settings,
        FLASHSALE_JOIN_LIMIT_PER_ADDRESS=str(LIMIT),
        FLASHSALE_RATE_WINDOW_SECONDS="60",
        FLASHSALE_FORWARDED_ALLOW_IPS="127.0.0.1, 10.0.0.0/8",
    ) as url:
        yield url


@pytest.fixture(scope="module")
def sale_id(api: str) -> str:
    body = sale_body()
    created = httpx.post(
        f"{api}/admin/sales", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert created.status_code == 201, created.text
    return str(body["id"])


def joins(api: str, sale: str, forwarded_for: str | None, count: int) -> list[int]:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    with httpx.Client(base_url=api) as http:
        return [
            http.post(f"/api/sales/{sale}/join", headers=headers).status_code for _ in range(count)
        ]


def test_a_forged_first_entry_never_escapes_the_join_limit(api: str, sale_id: str) -> None:
    """HAProxy appends the address it saw; whatever the client put before it is ignored, so
    changing it on every request does not reset the per-address limit."""
    codes = [joins(api, sale_id, f"203.0.113.{n}, 198.51.100.7", 1)[0] for n in range(LIMIT + 2)]
    assert codes == [201] * LIMIT + [429, 429]
    # behind a second trusted proxy (10.x), the same client is still the one counted
    assert joins(api, sale_id, "6.6.6.6, 198.51.100.7, 10.1.2.3", 1) == [429]
    # another client, through the same proxies, has its own count
    assert joins(api, sale_id, "198.51.100.7, 198.51.100.8, 10.1.2.3", 1) == [201]


def test_the_nearest_untrusted_hop_counts_not_the_left_most(api: str, sale_id: str) -> None:
    """A client that is itself an untrusted hop in the chain is counted as itself: trusted
    proxies are skipped only from the right."""
    for n in range(LIMIT):
        assert joins(api, sale_id, f"198.51.100.40, 10.0.0.{n}, 198.51.100.41", 1) == [201]
    assert joins(api, sale_id, "198.51.100.99, 10.0.0.9, 198.51.100.41", 1) == [429]


def test_without_x_forwarded_for_the_peer_is_the_client(api: str, sale_id: str) -> None:
    """127.0.0.1 is a trusted proxy here, but with nothing forwarded it is the client."""
    codes = joins(api, sale_id, None, LIMIT + 1)
    assert codes[-1] == 429, codes


def raw(api: str, request: bytes, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send bytes, read one answer: status, headers, JSON body."""
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if body:
            sock.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            dict(_headers(data)).get("content-length", "0")
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, dict(_headers(data)), orjson.loads(content)


def _headers(data: bytes) -> list[tuple[str, str]]:
    lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]


MALFORMED = {
    "garbage": (b"HELLO\r\n\r\n", 400),
    "an unknown HTTP version": (b"GET /healthz HTTP/9.9\r\n\r\n", 400),
    "a bad Content-Length": (b"POST /api/sales/x/join HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    "two Content-Lengths": (
        b"POST /api/sales/x/join HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
    ),
    "a bad chunk": (
        b"POST /api/sales/x/join HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        400,
    ),
    "a space in a header name": (b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    "a folded header": (b"GET /healthz HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 400),
    "an unknown method": (b"BREW /healthz HTTP/1.1\r\n\r\n", 400),
    "a 100 kB header": (b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    "2000 headers": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(2000)) + b"\r\n",
        431,
    ),
    "a 100 kB query": (b"GET /healthz?" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414),
    "a 20 kB path": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 414),
    "a wrong method": (b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
    "an unknown path": (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_what_the_server_refuses_is_a_json_error(api: str, case: str) -> None:
    request, expected = MALFORMED[case]
    status, headers, body = raw(api, request)
    assert status == expected
    assert headers["content-type"] == "application/json"
    assert set(body["error"]) >= {"code", "message"}


@pytest.mark.parametrize("over", [1, 1 << 20])
def test_a_body_over_the_admin_limit_is_a_413_not_a_reset(
    api: str, settings: Settings, over: int
) -> None:
    size = settings.max_admin_body_bytes + over
    head = (
        b"POST /admin/sales HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (ADMIN_TOKEN.encode(), size)
    )
    status, headers, body = raw(api, head, b" " * size)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert headers["content-type"] == "application/json"


def answered(api: str, route: str) -> dict[str, float]:
    """The request-duration samples of `route`'s 200 GET answers on /metrics (either worker
    serves it; both workers' files are summed), by sample name and bucket."""
    text = httpx.get(f"{api}/metrics").text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name.startswith("flashsale_http_request_duration_seconds")
                and s.labels.get("route") == route
                and (s.labels["method"], s.labels["status"]) == ("GET", "200")
            ):
                found[s.name + s.labels.get("le", "")] = s.value
    return found


def test_metrics_count_every_answer_of_both_workers(api: str, sale_id: str) -> None:
    """The workers tally their observations and write them to the shared folder once per
    event-loop turn: after N answers from concurrent clients /metrics shows exactly N more,
    with buckets that add up."""
    route, n, clients = "/api/sales/{sale_id}", 120, 6
    before = answered(api, route)

    def client(_: int) -> list[int]:
        with httpx.Client(base_url=api) as http:
            return [http.get(f"/api/sales/{sale_id}").status_code for _ in range(n // clients)]

    with ThreadPoolExecutor(clients) as pool:
        codes = [code for codes in pool.map(client, range(clients)) for code in codes]
    assert codes == [200] * n
    count = "flashsale_http_request_duration_seconds_count"
    deadline = time.monotonic() + 5  # the last answers' turn may still be ending
    while (after := answered(api, route)).get(count, 0) - before.get(count, 0) < n:
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.05)
    assert after[count] - before.get(count, 0) == n
    buckets = [v for k, v in after.items() if k.startswith(f"{count[:-6]}_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == after[count]  # cumulative, +Inf = count
    assert after["flashsale_http_request_duration_seconds_sum"] > before.get(
        "flashsale_http_request_duration_seconds_sum", 0
    )


STARTUP = """
import asyncio, gc
from flashsale.wiring import api_app

async def main() -> None:
    app = api_app()
    before = gc.get_threshold()[0], gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        print(*before, gc.get_threshold()[0], gc.get_freeze_count())

asyncio.run(main())
"""


def test_startup_settles_the_heap(settings: Settings, database: None) -> None:
    """Once the API has started (its services open), what startup made is frozen out of the
    collector's sight and the youngest generation is collected less often
    (docs/performance.md: the collector's share of a request)."""
    environ = {**os.environ, **settings_env(settings, FLASHSALE_LOG_LEVEL="ERROR")}
    out = subprocess.run(
        [sys.executable, "-c", STARTUP], cwd=REPO, env=environ, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    threshold_before, frozen_before, threshold, frozen = map(int, out.stdout.split())
    assert (threshold_before, frozen_before) == (700, 0)
    assert threshold == YOUNG_GENERATION
    assert frozen > 10_000  # the modules, the app, the connections
