"""One Redis connection per process that pipelines every concurrent coroutine's commands.

The hot path (join, hold, the status poll) spends one or two Redis commands per request, and
redis-py's asyncio client costs 150-300 µs of CPU per command here (a pool checkout, a task
for the socket timeout, argument encoding in Python, event hooks): about what uvicorn and
Starlette spend on a whole request. Redis runs commands one at a time anyway, so a single
connection loses nothing: commands issued during one event-loop turn leave in one write, and
hiredis parses the replies, which come back in order, in C. A command then costs a few µs.

Only commands that return at once belong here (scripts, reads, small writes): a blocking
command (XREADGROUP BLOCK, BLPOP) would stall every command queued behind it, so the
persister keeps redis-py. The connection is opened on first use, and reopened after a failure;
commands in flight when it fails raise `redis.exceptions.ConnectionError` (like redis-py's),
and when Redis stops answering for `timeout` seconds the connection is dropped and they raise
`redis.exceptions.TimeoutError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float

# hiredis's stub declares a 1-tuple; it packs a command of any length
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


def _reply_error(message: str) -> ResponseError:
    return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message)


class _Connection(asyncio.Protocol):
    """One socket: the futures of commands sent and not yet answered, oldest first."""

    def __init__(self, encoding: str | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = (
            hiredis.Reader(replyError=_reply_error, encoding=encoding)
            if encoding
            else hiredis.Reader(replyError=_reply_error)
        )
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.received = 0  # replies so far: the watchdog's measure of progress
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        try:
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                self.received += 1
                future = pending.popleft()
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = exc or "closed by the server"
        self.fail(RedisConnectionError(f"connection to Redis lost: {reason}"))

    def fail(self, error: Exception) -> None:
        """Close the socket and fail every command still waiting for its reply."""
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(self.error)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and self.error is None and self.transport is not None:
            data = b"".join(self.outgoing) if len(self.outgoing) > 1 else self.outgoing[0]
            self.outgoing.clear()
            self.transport.write(data)


class AutoPipeline:
    """Commands from any number of coroutines, pipelined onto one connection."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        decode: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password, self.ssl_context = username, password, ssl_context
        self.encoding = "utf-8" if decode else None
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watched: _Connection | None = None  # the connection the watchdog judges...
        self._seen = -1  # ...and how many replies it had given when last looked at
        self._shas: dict[str, str] = {}

    @classmethod
    def like(cls, redis: Redis, *, timeout: float = 5.0) -> AutoPipeline:
        """An auto-pipeline to the server (and database, credentials, TLS, decoding) of a
        redis-py client."""
        pool = redis.connection_pool
        kwargs = pool.connection_kwargs
        context = None
        if issubclass(pool.connection_class, SSLConnection):
            context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
            if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        return cls(
            host=kwargs.get("host", "127.0.0.1"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if unix else None,
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
            decode=bool(kwargs.get("decode_responses")),
            timeout=timeout,
        )

    # -- commands ----------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply, as redis-py would decode it."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        return await self._queue(connection, _pack(args))

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands sent together (not a transaction); their replies in order. Like
        a redis-py pipeline, raises the first command's error after every reply is in."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        futures = [self._queue(connection, _pack(tuple(command))) for command in commands]
        replies: list[Any] = []
        error: Exception | None = None
        for future in futures:  # every reply is awaited, so no error goes unretrieved
            try:
                replies.append(await future)
            except Exception as exc:
                replies.append(exc)
                error = error or exc
        if error is not None:
            raise error
        return replies

    async def evalsha(self, source: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run a Lua script by its SHA1, loading it on NOSCRIPT (a restarted or new Redis)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", source)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._connection is not None:
            self._connection.fail(RedisConnectionError("the auto-pipeline was closed"))
            self._connection = None

    # -- the connection ----------------------------------------------------------------------

    def _queue(self, connection: _Connection, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        connection.pending.append(future)
        connection.outgoing.append(packed)
        if not connection.flush_scheduled:
            connection.flush_scheduled = True
            loop.call_soon(connection.flush)
        if self._watchdog is None:
            self._watched, self._seen = connection, connection.received
            self._watchdog = loop.call_later(self.timeout, self._watch)
        return future

    def _watch(self) -> None:
        """Drop a connection that answered nothing for a whole `timeout` with work pending
        (so a command fails between one and two timeouts after Redis fell silent)."""
        self._watchdog = None
        connection = self._connection
        if connection is None or not connection.pending:
            return
        if connection is self._watched and connection.received == self._seen:
            connection.fail(RedisTimeoutError(f"Redis answered nothing for {self.timeout:g} s"))
            return
        self._watched, self._seen = connection, connection.received
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout, self._watch)

    async def _connect(self) -> _Connection:
        """The live connection, opening one (shared by every caller meanwhile) if needed."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if self.path:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self.encoding), self.path
                    )
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self.encoding),
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                    )
                setup: list[tuple[Arg, ...]] = []
                if self.password:
                    setup.append(
                        ("AUTH", self.username, self.password)
                        if self.username
                        else ("AUTH", self.password)
                    )
                if self.db:
                    setup.append(("SELECT", self.db))
                for command in setup:
                    await self._queue(connection, _pack(command))
        except BaseException as exc:
            if connection is not None:  # connected, but refused (AUTH, SELECT) or too slow
                connection.fail(RedisConnectionError(f"could not set up the connection: {exc}"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"could not connect to Redis in {self.timeout:g} s"
                ) from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"could not connect to Redis: {exc}") from exc
            raise
        self._connection = connection
        return connection


_shared: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], AutoPipeline]
] = weakref.WeakKeyDictionary()


def shared_for(redis: Redis, timeout: float) -> AutoPipeline:
    """This event loop's auto-pipeline to the server of `redis` (one per server, database,
    credentials and decoding: a connection belongs to one loop)."""
    per_loop = _shared.setdefault(asyncio.get_running_loop(), {})
    kwargs = redis.connection_pool.connection_kwargs
    key: tuple[object, ...] = tuple(
        str(kwargs.get(k))
        for k in (
            "host",
            "port",
            "path",
            "db",
            "username",
            "password",
            "decode_responses",
            "ssl_cert_reqs",
        )
    )
    key += (redis.connection_pool.connection_class, timeout)
    pipeline = per_loop.get(key)
    if pipeline is None:
        pipeline = per_loop[key] = AutoPipeline.like(redis, timeout=timeout)
    return pipeline


async def close_shared() -> None:
    """Close this event loop's auto-pipelines (at shutdown)."""
    for pipeline in _shared.pop(asyncio.get_running_loop(), {}).values():
        await pipeline.aclose()
