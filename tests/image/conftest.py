"""Fixtures of the image tests: the image (built once per session, cached across sessions by
scripts/image.sh), a PostgreSQL schema and Redis prefix of its own, and `run_image`, which
starts any command of the image with extra variables and mounts and stops it afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import pytest
from redis import Redis

from flashsale.config import Settings
from tests.support import image
from tests.support.image import Container, Mount

ADMIN_TOKEN = "image-test-admin-token"
RunImage = Callable[..., Container]
_builds: list[image.Build] = []


def free_port() -> int:
    """A TCP port nothing listens on now (the commands share the host's network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def built_image() -> image.Build:
    """The image, built by `scripts/image.sh build` (root and buildah needed; in CI missing
    either is a failure, elsewhere the image tests are skipped)."""
    problem = None
    if os.geteuid() != 0:
        problem = "the image tests need root (vfs storage, chroot, mount namespaces)"
    elif shutil.which("buildah") is None and shutil.which("apt-get") is None:
        problem = "no buildah, and no apt-get to install it"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    build = image.build()
    _builds.append(build)
    return build


@pytest.fixture(scope="session")
def image_env(settings: Settings, built_image: image.Build) -> Iterator[dict[str, str]]:
    """What every command of the image gets: the local Redis and PostgreSQL, under a schema and
    a key prefix of its own (removed afterwards), the admin and signing keys."""
    schema = f"{settings.database_schema}_image"
    prefix = f"{settings.redis_prefix}image"
    yield {
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "FLASHSALE_DATABASE_SCHEMA": schema,
        "FLASHSALE_REDIS_PREFIX": prefix,
        "FLASHSALE_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLASHSALE_TOKEN_KEY": secrets.token_urlsafe(32),
    }

    async def drop_schema() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    image.run_sync(drop_schema)
    with Redis.from_url(settings.redis_url) as redis:
        for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            redis.unlink(key)


@pytest.fixture
def run_image(image_env: dict[str, str]) -> Iterator[RunImage]:
    """`run_image(args, env=..., mounts=..., user=...)` starts `flashsale ARGS` in the image
    with `image_env` plus `env`; whatever is still running at the end of the test is stopped.
    The hook for commands that need more than Redis and PostgreSQL (a kubeconfig mounted for
    `operator`)."""
    started: list[Container] = []

    def start(
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        user: str | None = None,
        entrypoint: str | None = None,
    ) -> Container:
        container = image.run(
            args, env={**image_env, **(env or {})}, mounts=mounts, user=user, entrypoint=entrypoint
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.stop()
        container.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def migrated(image_env: dict[str, str]) -> str:
    """The image's schema, created by `flashsale migrate` run in the image; its output."""
    container = image.run_to_end(["migrate"], env=image_env, timeout=180)
    output = container.output()
    container.log_path.unlink(missing_ok=True)
    assert container.poll() == 0, output
    return output


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say what the image cost: built or found up to date, how long, how big."""
    for build in _builds:
        what = "built" if build.built else "up to date"
        terminalreporter.write_line(
            f"image {build.image}: {what} in {build.seconds:.1f} s, {build.size_mb:g} MB"
        )
