"""Build the FlashSale image and run its commands, without Docker, through scripts/image.sh.

`scripts/image.sh run` starts a command of the image the way the Helm chart's pods run it
(UID 10001, read-only root, tmpfs on /tmp and /tmp/flashsale-metrics, no capabilities,
no_new_privs, private mount and PID namespaces) on the host's network, so it reaches the local
Redis and PostgreSQL. `Container` is one such run, seen from the test: its output, its exit,
and a stop that goes through SIGTERM like a pod's.

`run` takes extra variables and bind mounts, so a later test can hand a command a kubeconfig:
`run(["operator"], env={"KUBECONFIG": "/etc/kube/config"}, mounts=[Mount(folder, "/etc/kube")])`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "image.sh"
IMAGE = os.environ.get("FLASHSALE_IMAGE", "localhost/flashsale:dev")


@dataclass(frozen=True)
class Build:
    """What `scripts/image.sh build` did: built the image or found it up to date."""

    image: str
    built: bool
    seconds: float
    size_mb: float
    log: str


def build() -> Build:
    """Build the image (a no-op taking a fraction of a second when no input changed)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(SCRIPT), "build"], capture_output=True, text=True, timeout=1800, check=False
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"scripts/image.sh build failed:\n{result.stderr[-6000:]}")
    return Build(
        image=IMAGE,
        built="is up to date" not in result.stderr,
        seconds=seconds,
        size_mb=size_mb(),
        log=result.stderr,
    )


def size_mb() -> float:
    """The image's size in MB, as buildah's storage counts it (uncompressed layers)."""
    result = subprocess.run(
        [str(SCRIPT), "size"], capture_output=True, text=True, timeout=60, check=True
    )
    return float(result.stdout.strip())


@dataclass(frozen=True)
class Mount:
    """A host file or folder bound into the container (read-only unless said otherwise)."""

    source: Path
    target: str
    read_only: bool = True

    def option(self) -> str:
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass
class Container:
    """One running command of the image; its stdout and stderr go to a file."""

    args: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    _returncode: int | None = field(default=None, repr=False)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def poll(self) -> int | None:
        """The exit status once the command has ended (it is PID 1 of its namespace: when it
        ends, everything it started ends with it)."""
        if self._returncode is None:
            self._returncode = self.process.poll()
        return self._returncode

    def wait(self, timeout: float) -> int:
        self._returncode = self.process.wait(timeout=timeout)
        return self._returncode

    def wait_for(self, found: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Wait until `found()` holds; fail at once, with the output, if the command ends."""
        deadline = time.monotonic() + timeout
        while not found():
            if self.poll() is not None:
                raise AssertionError(
                    f"{self.args} ended ({self.poll()}) before {what}:\n{self.output()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> str:
        regex = re.compile(pattern)
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines() if regex.search(line)]
            return bool(found)

        self.wait_for(seen, f"a line matching {pattern!r}", timeout)
        return found[0]

    def pid1(self) -> int | None:
        """Host PID of the namespace's PID 1, the image's command (the only child of
        `unshare --fork`)."""
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the command, as the kubelet sends; SIGKILL if it outlives `timeout`."""
        if self.poll() is None:
            pid = self.pid1()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                pid = self.pid1()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.wait(timeout)
                raise
        code = self.poll()
        assert code is not None
        return code


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
    user: str | None = None,
    entrypoint: str | None = None,
    log_dir: Path | None = None,
) -> Container:
    """Start `flashsale ARGS...` (or ENTRYPOINT ARGS...) in the image, in the background.

    The command sees the image's environment plus `env`, nothing of the caller's."""
    command = [str(SCRIPT), "run"]
    for name, value in (env or {}).items():
        command += ["--env", f"{name}={value}"]
    for mount in mounts:
        command += ["--volume", mount.option()]
    if user is not None:
        command += ["--user", user]
    if entrypoint is not None:
        command += ["--entrypoint", entrypoint]
    command += ["--", *args]
    handle, name = tempfile.mkstemp(prefix="flashsale-image-", suffix=".log", dir=log_dir)
    with os.fdopen(handle, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return Container(list(args), process, Path(name))


def run_to_end(
    args: Sequence[str],
    *,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
    user: str | None = None,
    entrypoint: str | None = None,
) -> Container:
    """Run a command that ends by itself (migrate, --help, a probe) and wait for its end."""
    container = run(args, env=env, mounts=mounts, user=user, entrypoint=entrypoint)
    try:
        container.wait(timeout)
    except subprocess.TimeoutExpired:
        container.stop()
        raise
    return container


def run_sync(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run `coroutine()` to its end from synchronous test code, on a loop of its own in a
    thread of its own: the session's event loop (pytest-asyncio's) is left alone."""

    async def main() -> T:
        return await coroutine()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, main()).result()
