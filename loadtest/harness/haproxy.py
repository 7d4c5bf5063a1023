"""HAProxy in front of a run's API processes (`loadtest/haproxy.cfg`, mirroring what the chart
gives the HAProxy Kubernetes Ingress controller): its configuration, a check that HAProxy
accepts it, and its per-server statistics from the admin socket."""

from __future__ import annotations

import contextlib
import csv
import resource
import socket
import string
import subprocess
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "haproxy.cfg"


def render(
    run_dir: Path,
    public_port: int,
    internal_port: int,
    servers: Sequence[tuple[str, int]],
    *,
    rate_requests: int = 1200,
    threads: int = 1,
    pod_maxconn: int = 500,
) -> str:
    """The configuration: shoppers on `public_port` (rate limited per client address), the
    in-cluster entry (admin API, probes) on `internal_port`, leastconn over `servers`."""
    lines = "\n".join(
        f"    server api{n + 1} {host}:{port}" for n, (host, port) in enumerate(servers)
    )
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # each connection: two descriptors
    maxconn = max(1000, min(50_000, (limit if limit > 0 else 20_000) // 2 - 500))
    return string.Template(TEMPLATE.read_text()).substitute(
        maxconn=maxconn,
        threads=threads,
        run_dir=run_dir,
        public_port=public_port,
        internal_port=internal_port,
        rate_requests=rate_requests,
        rate_period="10s",
        rate_status=429,
        rate_size="1m",
        pod_maxconn=pod_maxconn,
        servers=lines,
    )


def config_problem(haproxy: str, cfg: Path) -> str:
    """'' when HAProxy accepts the configuration, else what it says."""
    result = subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    return "" if result.returncode == 0 else (result.stderr or result.stdout)[-800:]


def stats(sock_path: Path) -> list[dict[str, str]]:
    """`show stat` from the admin socket: a row per frontend, backend and server."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(3)
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        lines = data.decode().lstrip("# ").splitlines()
        return list(csv.DictReader(lines))
    return []
