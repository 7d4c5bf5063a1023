"""Lua scripts, loaded from `lua/*.lua` once and run by SHA (EVALSHA, reloaded on NOSCRIPT)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """The scripts registered on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.join: AsyncScript = redis.register_script(source("join"))
        self.admit: AsyncScript = redis.register_script(source("admit"))
        self.hold: AsyncScript = redis.register_script(source("hold"))
        self.release: AsyncScript = redis.register_script(source("release"))
        self.pay: AsyncScript = redis.register_script(source("pay"))
        self.confirm: AsyncScript = redis.register_script(source("confirm"))
        self.prewarm: AsyncScript = redis.register_script(source("prewarm"))
        self.restock: AsyncScript = redis.register_script(source("restock"))
