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

On a Redis Cluster (`ClusterAutoPipeline`) there is one such connection per primary, and the
slot of a command's key (a script's KEYS[1]) chooses it, from redis-py's own slot map
(`RedisCluster.nodes_manager`): a sale's keys share one hash tag, so a request's commands
all go to one node. MOVED is followed and refreshes the map, ASK is followed with ASKING,
TRYAGAIN and CLUSTERDOWN are retried for up to `timeout`, and a connection that cannot be
opened (a primary that died) refreshes the map and retries, so a failover is followed. A
command already sent when its connection drops is never resent (it may have run): it fails,
and the map is refreshed for the commands after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import ssl
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")

Arg = str | bytes | int | float

# hiredis's stub declares a 1-tuple; it packs a command of any length
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class Loading(BusyLoadingError, ResponseError):
    """LOADING: the server is reading its data back after a restart and runs nothing yet. An
    outage (a ConnectionError, as redis-py's BusyLoadingError: the API answers 503), carried
    as the error reply it is."""


def _reply_error(message: str) -> ResponseError:
    """An error reply as the exception redis-py raises for it (the cluster's redirections
    carry their slot and node)."""
    kind, _, rest = message.partition(" ")
    if kind == "LOADING":
        return Loading(message)
    if kind == "MOVED":
        return MovedError(rest)
    if kind == "ASK":
        return AskError(rest)
    if kind == "TRYAGAIN":
        return TryAgainError(message)
    if kind == "CLUSTERDOWN":
        return ClusterDownError(message)
    return (NoScriptError if kind == "NOSCRIPT" else ResponseError)(message)


class NotConnected(RedisConnectionError):
    """No connection could be opened: the command was never sent, so trying again elsewhere
    (after a failover) cannot run it twice."""


class Pipelined(Protocol):
    """The hot path's connection to Redis: one node (`AutoPipeline`) or a cluster."""

    async def execute(self, *args: Arg) -> Any: ...

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]: ...

    async def evalsha(self, source: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any: ...

    async def aclose(self) -> None: ...


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
        return cls.of(pool.connection_class(**pool.connection_kwargs), timeout=timeout)

    @classmethod
    def of(cls, connection: AbstractConnection, *, timeout: float = 5.0) -> AutoPipeline:
        """An auto-pipeline opened as redis-py would open `connection` (which it never
        connects): same server, database, credentials, decoding, and the very TLS context
        redis-py builds from its options (certificates, keys and their password, CA file, path
        or data, hostname check, minimum version, ciphers...)."""
        context = connection.ssl_context.get() if isinstance(connection, SSLConnection) else None
        return cls(
            host=getattr(connection, "host", "127.0.0.1"),
            port=int(getattr(connection, "port", 6379)),
            path=connection.path if isinstance(connection, UnixDomainSocketConnection) else None,
            db=int(connection.db or 0),
            username=connection.username,
            password=connection.password,
            ssl_context=context,
            decode=bool(connection.encoder.decode_responses),
            timeout=timeout,
        )

    # -- commands ----------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply, as redis-py would decode it."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        return await self._queue(connection, _pack(args))

    async def execute_many(
        self, commands: Sequence[Sequence[Arg]], *, errors_in_place: bool = False
    ) -> list[Any]:
        """Several commands sent together, one after the other on the connection (not a
        transaction); their replies in order. Like a redis-py pipeline, raises the first
        command's error after every reply is in; `errors_in_place` returns each command's
        error as its reply instead."""
        connection = self._connection
        if connection is None or connection.error is not None:
            connection = await self._connect()
        futures = [self._queue(connection, _pack(tuple(command))) for command in commands]
        replies: list[Any] = []
        error: Exception | None = None
        try:
            for future in futures:  # every reply is awaited, so no error goes unretrieved
                try:
                    replies.append(await future)
                except Exception as exc:
                    replies.append(exc)
                    error = error or exc
        except BaseException:  # the caller was cancelled: nobody reads the other replies
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply, when it comes, is dropped
                elif not future.cancelled():
                    future.exception()  # retrieved, so its error is not logged as lost
            raise
        if error is not None and not errors_in_place:
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
        """The live connection, opening one (shared by every caller meanwhile) if needed.

        The opening belongs to no caller: it goes on when they are cancelled, and forgets
        itself when it ends whoever is left waiting, so the next command never gets an old
        opening's connection (dead since, or failed) back."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._opened)
        connection = await asyncio.shield(connecting)
        if connection.error is not None:  # lost between its opening and this caller's turn
            raise RedisConnectionError(f"connection to Redis lost: {connection.error}")
        return connection

    def _opened(self, done: asyncio.Future[_Connection]) -> None:
        if self._connecting is done:
            self._connecting = None
        if not done.cancelled():
            done.exception()  # retrieved: the callers still waiting (if any) raise it

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
                raise NotConnected(f"could not connect to Redis: {exc}") from exc
            raise
        self._connection = connection
        return connection


# Errors after which a cluster command is tried again: redirections, a shard busy or without
# a primary for a moment, a connection that could not be opened (nothing was sent).
_REDIRECTED = (AskError, TryAgainError, ClusterDownError, NotConnected, RedisClusterException)
_MAX_REDIRECTS = 16  # as redis-py's RedisClusterRequestTTL
_REFRESH_EVERY_S = 0.5  # topology refreshes asked for by errors, at most this often


def _key_of(command: Sequence[Arg]) -> Arg:
    """The key that routes a command on a cluster: a script's KEYS[1], a stream read's
    stream, else the first argument."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return command[3]
    if name in ("XREADGROUP", "XREAD"):
        words = [str(word).upper() for word in command]
        return command[words.index("STREAMS") + 1]
    return command[1]


class ClusterAutoPipeline:
    """The auto-pipeline on a Redis Cluster: one `AutoPipeline` per primary, the slot of each
    command's key choosing it from redis-py's slot map."""

    def __init__(self, cluster: RedisCluster, *, timeout: float = 5.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._nodes: dict[tuple[str, int], AutoPipeline] = {}
        self._ready = False
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed = 0.0
        self._shas: dict[str, str] = {}

    # -- commands ----------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        return await self._routed(
            self._slot(_key_of(args)), lambda node, asking: self._send(node, asking, command=args)
        )

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands of one slot (a sale's keys), sent together to its node; a command
        redirected on its own (its key already moved by a migration) follows its redirection
        alone, so nothing that ran is run again."""
        slot = self._slot(_key_of(commands[0]))
        replies = await self._routed(
            slot, lambda node, _: node.execute_many(commands, errors_in_place=True)
        )
        for n, reply in enumerate(replies):
            if isinstance(reply, _REDIRECTED):
                try:
                    replies[n] = await self._routed(
                        slot, functools.partial(self._send, command=commands[n]), reply
                    )
                except Exception as exc:
                    replies[n] = exc
        for reply in replies:
            if isinstance(reply, Exception):
                if isinstance(reply, RedisConnectionError | RedisTimeoutError):
                    self._stale()
                raise reply
        return replies

    async def evalsha(self, source: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """A script on the node of its KEYS[1]'s slot, loaded there on NOSCRIPT (a node new
        to the cluster, or the one a slot is migrating to)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        command = ("EVALSHA", sha, len(keys), *keys, *args)

        async def attempt(node: AutoPipeline, asking: bool) -> Any:
            try:
                return await self._send(node, asking, command=command)
            except NoScriptError:
                await node.execute("SCRIPT", "LOAD", source)
                return await self._send(node, asking, command=command)

        return await self._routed(self._slot(keys[0]), attempt)

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()

    # -- routing -----------------------------------------------------------------------------

    def _slot(self, key: Arg) -> int:
        return self.cluster.keyslot(key)

    @staticmethod
    async def _send(node: AutoPipeline, asking: bool, *, command: Sequence[Arg]) -> Any:
        if not asking:
            return await node.execute(*command)
        # ASKING applies to the next command on the connection: both leave in one write
        return (await node.execute_many([("ASKING",), command]))[1]

    async def _routed(
        self,
        slot: int,
        attempt: Callable[[AutoPipeline, bool], Awaitable[T]],
        error: Exception | None = None,
    ) -> T:
        """`attempt` on the primary of `slot`, following redirections (`error`: one the
        caller already met there)."""
        if not self._ready:
            await self.cluster.initialize()
            self._ready = True
        node: AutoPipeline | None = None
        asking = False
        deadline: float | None = None  # retries of a shard without a primary end then
        for tries in range(_MAX_REDIRECTS):
            if error is None:
                try:
                    node = node or self._primary(slot)
                    return await attempt(node, asking)
                except _REDIRECTED as exc:
                    error = exc
                except (RedisConnectionError, RedisTimeoutError):
                    self._stale()  # it may have run: not resent; the next command follows
                    raise
            met, error, asking = error, None, False
            if isinstance(met, AskError):  # MOVED as well
                node = self._at(met.host or (node.host if node else ""), met.port)
                if isinstance(met, MovedError):
                    self._stale()
                else:
                    asking = True
                continue
            # no primary for a moment (a failover), a node gone, a migration's TRYAGAIN
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            if time.monotonic() >= deadline:
                raise met
            await asyncio.sleep(min(0.05 * 2**tries, 0.5))
            if not isinstance(met, TryAgainError):
                await self._refresh()
            node = None
        raise ClusterDownError(f"slot {slot}: still redirected after {_MAX_REDIRECTS} tries")

    def _primary(self, slot: int) -> AutoPipeline:
        owner: ClusterNode = self.cluster.nodes_manager.get_node_from_slot(slot)
        return self._at(owner.host, int(owner.port))

    def _at(self, host: str, port: int) -> AutoPipeline:
        pipeline = self._nodes.get((host, port))
        if pipeline is None:
            # opened exactly as redis-py opens a connection to that node
            kwargs: dict[str, Any] = dict(self.cluster.get_connection_kwargs())
            node = ClusterNode(host, port, **kwargs)
            connection = node.connection_class(**node.connection_kwargs)
            pipeline = self._nodes[(host, port)] = AutoPipeline.of(connection, timeout=self.timeout)
        return pipeline

    def _stale(self) -> None:
        """Refresh the slot map soon, in the background (at most every _REFRESH_EVERY_S)."""
        if self._refreshing is None and time.monotonic() - self._refreshed >= _REFRESH_EVERY_S:
            self._start_refresh()

    async def _refresh(self) -> None:
        """Refresh the slot map now (one refresh shared by every caller meanwhile)."""
        refreshing = self._refreshing or self._start_refresh()
        with contextlib.suppress(Exception):  # no node answered: the caller's retry decides
            await asyncio.shield(refreshing)

    def _start_refresh(self) -> asyncio.Future[None]:
        refreshing = self._refreshing = asyncio.ensure_future(
            self.cluster.nodes_manager.initialize()
        )
        refreshing.add_done_callback(self._refresh_done)
        return refreshing

    def _refresh_done(self, done: asyncio.Future[None]) -> None:
        self._refreshing = None
        self._refreshed = time.monotonic()
        if not done.cancelled() and done.exception() is not None:
            log.warning("could not refresh the Redis Cluster's slot map: %s", done.exception())


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Pipelined]] = (
    weakref.WeakKeyDictionary()
)

# what makes two clients' connections alike: server, database, credentials, decoding, TLS
_IDENTITY = ("host", "port", "path", "db", "username", "password", "decode_responses")


def shared_for(redis: Redis | RedisCluster, timeout: float) -> Pipelined:
    """This event loop's auto-pipeline to the server of `redis` (one per server, database,
    credentials, TLS options and decoding: a connection belongs to one loop), or to the
    cluster of that client."""
    per_loop = _shared.setdefault(asyncio.get_running_loop(), {})
    if isinstance(redis, RedisCluster):
        # it follows that client's slot map: one per client
        key: tuple[object, ...] = ("cluster", id(redis), timeout)
        cluster = per_loop.get(key)
        if not isinstance(cluster, ClusterAutoPipeline) or cluster.cluster is not redis:
            cluster = per_loop[key] = ClusterAutoPipeline(redis, timeout=timeout)
        return cluster
    kwargs = redis.connection_pool.connection_kwargs
    key = (
        redis.connection_pool.connection_class,
        timeout,
        *(
            (name, str(value))
            for name, value in sorted(kwargs.items())
            if name in _IDENTITY or name.startswith("ssl")
        ),
    )
    pipeline = per_loop.get(key)
    if pipeline is None:
        pipeline = per_loop[key] = AutoPipeline.like(redis, timeout=timeout)
    return pipeline


async def close_shared() -> None:
    """Close this event loop's auto-pipelines (at shutdown)."""
    for pipeline in _shared.pop(asyncio.get_running_loop(), {}).values():
        await pipeline.aclose()
