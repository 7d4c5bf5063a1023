"""The processes a run starts, and always stops: FlashSale's roles, HAProxy, locust, private
Redis and PostgreSQL servers. Each child runs in its own session (a Ctrl-C reaches only the
harness, and a signal to its process group reaches whatever it forked), so the harness can
kill -9 one, stall it with SIGSTOP, restart it with the same command, and stop them all at
the end. Only processes started here are ever signalled.

Also: finding Redis and PostgreSQL for a run, installing a Debian tool, free ports, waiting
for a port or a /readyz, and the environment of a FlashSale role."""

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
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flashsale.config import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
SERVICES_ENV = ROOT / ".run" / "services.env"
# a short local sale: fast admitter ticks, expired holds swept within a quarter second, a dead
# persister's entries taken over after 2 s
FAST_ROLES = {
    "FLASHSALE_ADMITTER_TICK_MS": "50",
    "FLASHSALE_ADMITTER_REFRESH_SECONDS": "1",
    "FLASHSALE_SWEEP_INTERVAL_MS": "250",
    "FLASHSALE_PERSISTER_CLAIM_IDLE_MS": "2000",
}
FLASHSALE = [sys.executable, "-m", "flashsale.cli"]


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


def wait_port(
    port: int, within: float, procs: Procs | None = None, host: str = "127.0.0.1"
) -> None:
    """Wait until something accepts connections on `host`:`port`."""
    deadline = time.monotonic() + within
    while True:
        if procs is not None:
            procs.check()
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {within:.0f} s")
        time.sleep(0.1)


def wait_ready(url: str, within: float, procs: Procs | None = None) -> None:
    """Wait until `url` (a /readyz) answers 200, failing early if a child died."""
    deadline = time.monotonic() + within
    while True:
        if procs is not None:
            procs.check()
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} was not ready within {within:.0f} s")
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


@dataclass(frozen=True)
class Command:
    """How a child was started, so it can be started again the same way."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    user: str | None


class Procs:
    """Child processes started here, each in its own session, with their output in a log file
    of their own (or on stderr when there is no log folder); `stop` ends them all: SIGTERM,
    then SIGKILL of each one's process group."""

    def __init__(self, log_dir: Path | None) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, Command] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: Path = ROOT,
        *,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as `name` (as `user` when given: servers that refuse to run as root)."""
        self.commands[name] = Command(tuple(argv), env, cwd, user)
        out: IO[bytes] | int = sys.stderr.fileno()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if name not in self._logs:
                self._logs[name] = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
            out = self._logs[name]
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
        self.procs[name] = proc
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start `name` again with the command it was started with."""
        command = self.commands[name]
        if name in self.procs and self.procs[name].poll() is None:
            self.stop(name)
        return self.start(name, command.argv, command.env, command.cwd, user=command.user)

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to `name`'s whole process group (kill -9, SIGSTOP, SIGCONT...)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def kill(self, name: str) -> None:
        """kill -9: no clean-up, no goodbye, as a crash or the OOM killer would."""
        self.signal(name, signal.SIGKILL)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def log_tail(self, name: str, chars: int = 1500) -> str:
        if self.log_dir is None or not (self.log_dir / f"{name}.log").exists():
            return ""
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]

    def cpu(self) -> dict[str, float]:
        """CPU seconds each running child has used so far."""
        out = {}
        for name, proc in self.procs.items():
            used = cpu_seconds(proc.pid)
            if used is not None:
                out[name] = used
        return out

    def check(self, *names: str, but: Sequence[str] = ()) -> None:
        """Raise if a child (of `names`, or any) has exited: they all should run until
        stopped, `but` those (a child killed on purpose)."""
        for name, proc in self.procs.items():
            if (not names or name in names) and name not in but and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}"
                )

    def stop(self, *names: str, grace: float = 10.0) -> None:
        chosen = {n: self.procs[n] for n in names if n in self.procs} if names else self.procs
        for proc in chosen.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)  # a stalled child cannot end otherwise
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in chosen.values():
            with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it forked
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in list(chosen):
            self.procs.pop(name, None)
        if not self.procs:
            for out in self._logs.values():
                out.close()
            self._logs.clear()


@contextlib.contextmanager
def processes(log_dir: Path | None) -> Iterator[Procs]:
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
    """`child_env` for a run's own install: its servers, Redis prefix, schema, keys and quiet
    logs, so every role of the run agrees and sees nothing of another install's."""
    return child_env(
        base,
        **{
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "FLASHSALE_REDIS_PREFIX": settings.redis_prefix,
            "FLASHSALE_DATABASE_SCHEMA": settings.database_schema,
            "FLASHSALE_ADMIN_TOKEN": settings.admin_token,
            "FLASHSALE_TOKEN_KEY": settings.token_key,
            "FLASHSALE_TOKEN_KEY_PREVIOUS": "",
            "FLASHSALE_LOG_LEVEL": "WARNING",
            "FLASHSALE_METRICS_PORT": "0",
            "FLASHSALE_JOIN_BUCKETS": str(settings.join_buckets),
            **more,
        },
    )
