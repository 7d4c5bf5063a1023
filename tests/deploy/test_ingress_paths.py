"""What the public edge lets through: the chart's Ingress and the spike's HAProxy
(loadtest/haproxy.cfg, which mirrors it) expose the same paths, the shopper pages and the API,
and nothing else. HAProxy is Debian's, run for real in front of a backend that answers every
path; the Ingress is rendered by helm-python-sdk (tests/kubernetes/ installs it for real).
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import helm_python as helm
import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# path -> public? (api/app.py's ROUTES: the pages, the shopper API; the rest is for operators)
PATHS = {
    "/": True,
    "/sales/spring-drop": True,
    "/static/app.js": True,
    "/api/sales/spring-drop/status": True,
    "/api/sales/spring-drop/join": True,
    "/admin/sales": False,
    "/metrics": False,
    "/openapi.json": False,
    "/healthz": False,
    "/readyz": False,
    "/salesman": False,
    "/apix": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"backend saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """loadtest/haproxy.cfg as the spike fills it in, in front of the echo backend."""
    if not os.access(HAPROXY, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is missing: `make packages` installs it")
        pytest.skip("haproxy is missing (apt-get install haproxy); CI fails instead")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    run_dir = tmp_path_factory.mktemp("haproxy")
    public = free_port()
    config = string.Template((REPO / "loadtest" / "haproxy.cfg").read_text()).substitute(
        maxconn=1000,
        threads=1,
        run_dir=run_dir,
        public_port=public,
        internal_port=free_port(),
        rate_requests=1000,
        rate_period="10s",
        rate_status=429,
        rate_size="1m",
        pod_maxconn=50,
        servers=f"    server api1 127.0.0.1:{backend.server_address[1]}",
    )
    (run_dir / "haproxy.cfg").write_text(config)
    check = subprocess.run(
        [HAPROXY, "-c", "-q", "-f", str(run_dir / "haproxy.cfg")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(run_dir / "haproxy.cfg")])
    url = f"http://127.0.0.1:{public}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/x", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.shutdown()


@pytest.mark.parametrize(("path", "public"), list(PATHS.items()))
def test_haproxy_lets_through_only_the_public_paths(edge: str, path: str, public: bool) -> None:
    answer = httpx.get(f"{edge}{path}", timeout=5)
    if public:
        assert answer.status_code == 200 and answer.text == f"backend saw {path}"
    else:
        assert answer.status_code == 404 and "backend saw" not in answer.text


def test_the_ingress_routes_the_same_paths() -> None:
    """The chart's Ingress: / exactly, /sales, /static and /api as prefixes (a Prefix path
    matches itself and what lies below it, element by element: /salesman is not /sales),
    which is what haproxy.cfg's `public` ACL lets through."""
    with helm.Chart.load(REPO / "charts" / "flashsale") as chart:
        manifests = chart.render({}, name="flashsale", namespace="shop", is_install=True)
    (ingress,) = [
        d
        for name, text in manifests.items()
        if not name.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d and d["kind"] == "Ingress"
    ]
    paths = [(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == [
        ("/", "Exact"),
        ("/sales", "Prefix"),
        ("/static", "Prefix"),
        ("/api", "Prefix"),
    ]
    config = (REPO / "loadtest" / "haproxy.cfg").read_text()
    exact = [p for p, kind in paths if kind == "Exact"] + [
        p for p, kind in paths if kind == "Prefix"
    ]
    assert f"acl public path {' '.join(exact)}\n" in config
    below = " ".join(f"{p}/" for p, kind in paths if kind == "Prefix")
    assert f"acl public path_beg {below}\n" in config


def test_haproxy_checks_readiness_as_the_chart_does() -> None:
    """HAProxy's health check is the chart's API readinessProbe: the same endpoint, asked as
    often, out after as many failures (what /readyz requires is api/health.py's to decide, in
    one place for both; tests/integration/test_postgres_down.py shows it stays 200 while
    PostgreSQL is down)."""
    with helm.Chart.load(REPO / "charts" / "flashsale") as chart:
        manifests = chart.render({}, name="flashsale", namespace="shop", is_install=True)
    (api,) = [
        d
        for name, text in manifests.items()
        if not name.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "flashsale-api"
    ]
    probe = api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    config = (REPO / "loadtest" / "haproxy.cfg").read_text()
    assert f"option httpchk GET {probe['httpGet']['path']}\n" in config
    assert "http-check expect status 200\n" in config
    checks = next(line.split() for line in config.splitlines() if "default-server check" in line)
    assert checks[checks.index("inter") + 1] == f"{probe['periodSeconds']}s"
    assert checks[checks.index("fall") + 1] == str(probe["failureThreshold"])
