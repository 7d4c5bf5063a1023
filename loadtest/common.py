"""What the spike harness and the benchmark share: finding Redis and PostgreSQL, installing a
Debian tool, starting and always stopping child processes, waiting for a port."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import asyncpg

from flashsale.config import Settings
from flashsale.waiting_room.redis_client import open_redis, remove_matching

ROOT = Path(__file__).resolve().parent.parent
SERVICES_ENV = ROOT / ".run" / "services.env"


def log(message: str) -> None:
    """Progress goes to stderr: stdout ends with the one JSON line scripts read."""
    print(message, file=sys.stderr, flush=True)


def ensure_services() -> dict[str, str]:
    """REDIS_URL and DATABASE_URL: from the environment when both are set, else from
    scripts/ensure-services.sh (which reuses what answers on the standard ports, or installs
    and starts Redis and PostgreSQL, exactly as `make test` and `make demo` do)."""
    found = {k: os.environ[k] for k in ("REDIS_URL", "DATABASE_URL") if os.environ.get(k)}
    if len(found) == 2:
        return found
    subprocess.run([str(ROOT / "scripts" / "ensure-services.sh")], check=True, stdout=sys.stderr)
    values: dict[str, str] = {}
    for line in SERVICES_ENV.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            values[name] = value
    return {**values, **found}


def ensure_tool(binary: str, package: str, *, install: bool = True) -> str | None:
    """The path of `binary`, installing Debian's `package` with apt-get (through sudo when not
    root) if it is missing and `install` allows; None when it cannot be had."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path or not install:
        return path
    if not shutil.which("apt-get"):
        log(f"{binary} is missing and apt-get is not available: install {package} yourself")
        return None
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and not shutil.which("sudo"):
        log(f"{binary} is missing: installing {package} needs root (or sudo)")
        return None
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    log(f"installing Debian's {package} with apt-get")
    try:
        subprocess.run([*apt, "update", "-qq"], check=True, stdout=sys.stderr)
        subprocess.run(
            [*apt, "install", "-y", "-qq", "--no-install-recommends", package],
            check=True,
            stdout=sys.stderr,
        )
    except subprocess.CalledProcessError as exc:
        log(f"could not install {package}: {exc}")
        return None
    return ensure_tool(binary, package, install=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, within: float, procs: Procs | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + within
    while True:
        if procs is not None:
            procs.check()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {within:.0f} s")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, its reaped children included) a live process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """`argv` run on the given CPUs (taskset), when asked and possible."""
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus, *argv]
    return list(argv)


class Procs:
    """Child processes started here, each in its own session (so a Ctrl-C reaches only the
    harness), with their output in a log file; `stop` ends them all: SIGTERM, then SIGKILL of
    each one's process group. Only processes started here are ever signalled."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(out)
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def cpu(self) -> dict[str, float]:
        """CPU seconds each running child has used so far."""
        out = {}
        for name, proc in self.procs.items():
            used = cpu_seconds(proc.pid)
            if used is not None:
                out[name] = used
        return out

    def check(self) -> None:
        """Raise if a child has exited (they all should run until stopped)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{tail}")

    def stop(self, *names: str, grace: float = 10.0) -> None:
        chosen = [self.procs[n] for n in names] if names else list(self.procs.values())
        for proc in chosen:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in chosen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it forked
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in names or list(self.procs):
            self.procs.pop(name, None)
        if not self.procs:
            for out in self._logs:
                out.close()
            self._logs.clear()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop()


def child_env(base: dict[str, str], **settings: str) -> dict[str, str]:
    """The environment of a FlashSale role: the caller's, less what must not leak into it
    (`flashsale api` empties PROMETHEUS_MULTIPROC_DIR at start), plus `settings`."""
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(base)
    env.update(settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def install_env(base: dict[str, str], settings: Settings, **more: str) -> dict[str, str]:
    """`child_env` for a run's own install: its Redis prefix, schema, keys and quiet logs."""
    return child_env(
        base,
        **{
            "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
            "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
            "FLASHSALE_ADMIN_TOKEN": settings.admin_token,
            "FLASHSALE_TOKEN_KEY": settings.token_key,
            "FLASHSALE_TOKEN_KEY_PREVIOUS": "",
            "FLASHSALE_LOG_LEVEL": "WARNING",
            "FLASHSALE_METRICS_PORT": "0",
            **more,
        },
    )


async def drop_install(settings: Settings) -> None:
    """Remove everything under a run's own Redis prefix and PostgreSQL schema."""
    redis = await open_redis(settings)
    try:
        await remove_matching(redis, f"{settings.redis_prefix}:*")
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
    finally:
        await conn.close()
