"""Lua scripts, loaded from `lua/*.lua` once and run by SHA (EVALSHA, loaded on NOSCRIPT) over
the process's auto-pipeline (waiting_room/autopipeline.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from flashsale.waiting_room.autopipeline import Arg, Pipelined, shared_for
from flashsale.waiting_room.redis_client import RedisClient

# Lua libraries (files of local functions) put in front of the scripts that call them
LIBRARIES = {"hold": ("seating",)}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


@cache
def source(name: str) -> str:
    """A script's text, preceded by the libraries it uses."""
    return "".join(f"{_read(library)}\n" for library in LIBRARIES.get(name, ())) + _read(name)


class PipelineOf:
    """The running event loop's auto-pipeline to the server (or cluster) of a redis-py client,
    looked up once per loop (a connection belongs to one loop; tests run several)."""

    def __init__(self, redis: RedisClient, timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipeline: Pipelined | None = None

    def __call__(self) -> Pipelined:
        loop = asyncio.get_running_loop()
        pipeline = self._pipeline
        if loop is not self._loop or pipeline is None:
            pipeline = self._pipeline = shared_for(self.redis, self.timeout)
            self._loop = loop
        return pipeline


class Script:
    """One Lua script: `await script(keys=[...], args=[...])`."""

    def __init__(self, name: str, pipeline: PipelineOf) -> None:
        self.name = name
        self.source = source(name)
        self._pipeline = pipeline

    async def __call__(self, *, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self._pipeline().evalsha(self.source, keys, args)


class Scripts:
    """The scripts, run on the server of one redis-py client."""

    def __init__(self, redis: RedisClient, timeout: float = 5.0) -> None:
        self.pipeline = PipelineOf(redis, timeout)
        self.join = Script("join", self.pipeline)
        self.admit = Script("admit", self.pipeline)
        self.hold = Script("hold", self.pipeline)
        self.release = Script("release", self.pipeline)
        self.pay = Script("pay", self.pipeline)
        self.confirm = Script("confirm", self.pipeline)
        self.prewarm = Script("prewarm", self.pipeline)
        self.restock = Script("restock", self.pipeline)
