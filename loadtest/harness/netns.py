"""A network namespace of the harness's own for one API process, so a chaos run can cut that
process off from Redis and nothing else.

The namespace gets two veth pairs, each a /30 of 10.213.N.0/24 (N chosen free on this
machine): one carries the process's traffic with its clients (HAProxy) and PostgreSQL, the
other its traffic with Redis, which listens on the host's end of that pair too. Setting the
host's end of the Redis pair down drops every packet between the process and Redis (the
process's own route stays, so its packets vanish, as in a real partition: its timeouts must
fire), and setting it up again heals it. Everything is made with iproute2 (`ip`) and removed
at the end; it needs root (CAP_NET_ADMIN), so `open_namespace` answers None elsewhere, with the
reason."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from loadtest.harness.processes import ensure_tool, log


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class Namespace:
    name: str
    subnet: int  # N of 10.213.N.0/24
    app_link: str  # host's end of the pair carrying clients and PostgreSQL
    redis_link: str  # host's end of the pair carrying Redis

    @property
    def host_app(self) -> str:
        """The host's address on the app pair (PostgreSQL listens here)."""
        return f"10.213.{self.subnet}.1"

    @property
    def inside(self) -> str:
        """The namespace's address clients reach the process at."""
        return f"10.213.{self.subnet}.2"

    @property
    def host_redis(self) -> str:
        """The host's address on the Redis pair (Redis listens here)."""
        return f"10.213.{self.subnet}.5"

    def run(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut_redis(self) -> None:
        _ip("link", "set", self.redis_link, "down")

    def heal_redis(self) -> None:
        _ip("link", "set", self.redis_link, "up")


def why_not() -> str:
    """'' when a namespace can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if ensure_tool("ip", "iproute2") is None:
        return "iproute2 (ip) is missing"
    probe = f"fsprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def _free_subnet() -> int:
    used: str = _ip("-o", "addr").stdout
    for n in [*range(os.getpid() % 200 + 20, 250), *range(20, 250)]:
        if f"10.213.{n}." not in used:
            return int(n)
    raise RuntimeError("no free 10.213.N.0/24 subnet for the namespace")


@contextmanager
def open_namespace(tag: str) -> Iterator[Namespace]:
    """Make the namespace and its two veth pairs; always remove them."""
    subnet = _free_subnet()
    ns = Namespace(f"fschaos{tag}", subnet, f"fsc{tag}a", f"fsc{tag}r")
    made: list[list[str]] = []
    try:
        _ip("netns", "add", ns.name)
        made.append(["netns", "del", ns.name])
        for link, host_ip, inside_ip in (
            (ns.app_link, ns.host_app, ns.inside),
            (ns.redis_link, ns.host_redis, f"10.213.{subnet}.6"),
        ):
            _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            made.append(["link", "del", link])
            _ip("link", "set", f"{link}p", "netns", ns.name)
            _ip("addr", "add", f"{host_ip}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", ns.name, "addr", "add", f"{inside_ip}/30", "dev", f"{link}p")
            _ip("-n", ns.name, "link", "set", f"{link}p", "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        log(f"namespace {ns.name}: the API process at {ns.inside}, Redis via {ns.host_redis}")
        yield ns
    finally:
        for args in reversed(made):
            _ip(*args, check=False)
