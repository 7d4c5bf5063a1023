"""The auto-pipeline (waiting_room/autopipeline.py) against a real Redis: replies reach the
right callers, concurrent commands share writes, errors stay with their command, a dead or
silent connection fails what it holds and is replaced (also when the caller that opened it
gave up), and TLS is set up exactly as redis-py sets it up (a real redis-server on TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashsale.config import Settings
from flashsale.waiting_room import autopipeline
from flashsale.waiting_room.autopipeline import AutoPipeline, shared_for
from tests.support import free_port


@pytest.fixture
async def pipe(redis: Redis) -> AsyncIterator[AutoPipeline]:
    pipeline = AutoPipeline.like(redis, timeout=5)
    yield pipeline
    await pipeline.aclose()


def key(settings: Settings, name: str) -> str:
    return f"{settings.redis_prefix}:{{ap-{secrets.token_hex(4)}}}:{name}"


async def test_replies_reach_their_callers_and_commands_share_writes(
    pipe: AutoPipeline, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter, values = key(settings, "n"), key(settings, "h")
    writes = []
    real_flush = autopipeline._Connection.flush

    def flush(self: autopipeline._Connection) -> None:
        writes.append(len(self.outgoing))
        real_flush(self)

    assert await pipe.execute("PING") == "PONG"  # connected (and the database selected)
    monkeypatch.setattr(autopipeline._Connection, "flush", flush)
    n = 2000
    results = await asyncio.gather(
        *(pipe.execute("INCR", counter) for _ in range(n)),
        *(pipe.execute("HSET", values, f"f{i}", i) for i in range(n)),
    )
    assert sorted(results[:n]) == list(range(1, n + 1))  # each caller got its own reply
    assert results[n:] == [1] * n
    assert await redis.hget(values, "f1234") == "1234"
    assert sum(writes) == 2 * n
    assert len(writes) < n / 10, writes  # in a handful of writes, not one per command
    # decoding follows the client it was made like: text here, bytes without decoding
    assert await pipe.execute("HGET", values, "f7") == "7"
    raw = AutoPipeline.like(Redis.from_url(settings.redis_url), timeout=5)
    try:
        assert await raw.execute("HGET", values, "f7") == b"7"
    finally:
        await raw.aclose()
    await redis.delete(counter, values)


async def test_an_error_stays_with_its_command(
    pipe: AutoPipeline, settings: Settings, redis: Redis
) -> None:
    text = key(settings, "text")
    await pipe.execute("SET", text, "not a number")
    bad, good = await asyncio.gather(
        pipe.execute("INCR", text), pipe.execute("GET", text), return_exceptions=True
    )
    assert isinstance(bad, ResponseError) and good == "not a number"
    with pytest.raises(ResponseError, match="not an integer"):
        await pipe.execute_many([("GET", text), ("INCR", text), ("STRLEN", text)])
    assert await pipe.execute_many([("GET", text), ("STRLEN", text)]) == ["not a number", 12]
    await redis.delete(text)


async def test_scripts_load_themselves_on_a_redis_that_forgot_them(
    pipe: AutoPipeline, redis: Redis
) -> None:
    source = f"-- {secrets.token_hex(8)}\nreturn {{KEYS[1], ARGV[1] + 1}}"
    assert await pipe.evalsha(source, ["k"], [41]) == ["k", 42]
    await redis.script_flush()
    assert await pipe.evalsha(source, ["k"], [1]) == ["k", 2]


async def test_a_killed_connection_fails_what_it_holds_and_is_replaced(
    pipe: AutoPipeline, redis: Redis, settings: Settings
) -> None:
    queue = key(settings, "q")
    client_id = await pipe.execute("CLIENT", "ID")
    # a blocking command holds the connection; what is queued behind it waits for it
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", queue, 10))
    behind = asyncio.ensure_future(pipe.execute("PING"))
    await asyncio.sleep(0.1)
    assert await redis.client_kill_filter(_id=client_id) == 1
    for waiting in (blocked, behind):
        with pytest.raises(RedisConnectionError):
            await waiting
    assert await pipe.execute("PING") == "PONG"  # a new connection
    assert await pipe.execute("CLIENT", "ID") != client_id


async def test_a_cancelled_caller_does_not_shift_the_replies(
    pipe: AutoPipeline, redis: Redis, settings: Settings
) -> None:
    queue, name = key(settings, "q"), key(settings, "name")
    await pipe.execute("SET", name, "kept")
    blocked = asyncio.ensure_future(pipe.execute("BLPOP", queue, 0.3))
    impatient = asyncio.ensure_future(pipe.execute("ECHO", "never read"))
    after = asyncio.ensure_future(pipe.execute("GET", name))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert await blocked is None
    assert await after == "kept"
    with contextlib.suppress(asyncio.CancelledError):
        await impatient
    assert impatient.cancelled()
    await redis.delete(name)


@pytest.mark.parametrize("then", ["replies", "connection lost"])
async def test_a_caller_cancelled_in_a_batch_leaves_no_error_unretrieved(
    pipe: AutoPipeline, redis: Redis, settings: Settings, then: str
) -> None:
    # the caller gives up while the batch's first command blocks; the commands behind it
    # then fail (an error reply, or the connection dropped): nobody awaits them, and asyncio
    # must not report "Future exception was never retrieved" (the chaos run saw it)
    queue, text = key(settings, "q"), key(settings, "text")
    await pipe.execute("SET", text, "not a number")
    client_id = await pipe.execute("CLIENT", "ID")
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        caller = asyncio.ensure_future(
            pipe.execute_many([("BLPOP", queue, 0.3), ("INCR", text), ("INCR", text)])
        )
        await asyncio.sleep(0.05)
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        if then == "connection lost":
            assert await redis.client_kill_filter(_id=client_id) == 1
        await asyncio.sleep(0.5)  # the BLPOP has timed out and the errors are in
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
    assert await pipe.execute("GET", text) == "not a number"  # the replies stayed in step
    await redis.delete(text)


async def test_a_silent_server_times_out_and_the_next_command_reconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = AutoPipeline(host="127.0.0.1", port=port, timeout=0.2)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(RedisTimeoutError, match="answered nothing"):
                await pipe.execute("PING")
            with pytest.raises(RedisTimeoutError):
                await pipe.execute("PING")
        assert len(accepted) == 2  # the silent connection was dropped and another opened
    finally:
        await pipe.aclose()
        server.close()
        for writer in accepted:
            writer.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pipe = AutoPipeline(host="127.0.0.1", port=port, timeout=2)
    with pytest.raises(RedisConnectionError, match="could not connect"):
        await pipe.execute("PING")


async def test_a_database_and_a_password_in_the_url_are_used(
    redis: Redis, settings: Settings
) -> None:
    other_db = Redis.from_url(
        urlsplit(settings.redis_url)._replace(path="/9").geturl(), decode_responses=True
    )
    name = key(settings, "db9")
    pipe = AutoPipeline.like(other_db, timeout=5)
    try:
        await pipe.execute("SET", name, "nine")
        assert await other_db.get(name) == "nine"
        assert await redis.get(name) is None
    finally:
        await other_db.delete(name)
        await other_db.aclose()
        await pipe.aclose()
    wrong = AutoPipeline.like(Redis.from_url(settings.redis_url, password="not-the-password"))
    for _ in range(2):  # AUTH refused (no password set, or a wrong one), every time:
        with pytest.raises(ResponseError):  # the refused connection is not kept
            await wrong.execute("PING")
    assert wrong._connection is None
    await wrong.aclose()


async def test_one_shared_pipeline_per_server_and_loop(redis: Redis, settings: Settings) -> None:
    again = Redis.from_url(settings.redis_url, decode_responses=True)
    assert shared_for(redis, 5) is shared_for(again, 5)
    assert shared_for(redis, 5) is not shared_for(Redis.from_url(settings.redis_url), 5)
    await again.aclose()


async def test_a_caller_cancelled_while_connecting_leaves_nothing_stale(
    pipe: AutoPipeline, redis: Redis
) -> None:
    # the only caller gives up while the connection is being opened; the opening goes on
    first = asyncio.ensure_future(pipe.execute("PING"))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.1)
    client_id = await pipe.execute("CLIENT", "ID")
    # that connection dies: the next command opens another at once, instead of being queued
    # on the dead one until the watchdog gives up on it (the opening was once kept, stale)
    assert await redis.client_kill_filter(_id=client_id) == 1
    await asyncio.sleep(0.1)
    async with asyncio.timeout(1):
        assert await pipe.execute("PING") == "PONG"
    assert await pipe.execute("CLIENT", "ID") != client_id


# -- TLS: every option of redis-py reaches the hot path ---------------------------------------


def _certificate(
    subject: str, key: Any, issuer: tuple[Any, Any] | None = None, *, ca: bool = False
) -> Any:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Tls:
    port: int
    ca: str  # PEM
    other_ca: str  # PEM of a CA that signed nothing here
    client_cert: Path
    client_key: Path  # encrypted with `password`
    password: str


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """A redis-server of its own that speaks only TLS and wants a client certificate."""
    if not shutil.which("redis-server"):
        pytest.skip("Debian's redis-server is not installed")
    directory = tmp_path_factory.mktemp("tls")
    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    ca_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("FlashSale test CA", ca_key, ca=True)
    other = _certificate("Unrelated CA", other_key, ca=True)
    files: dict[str, bytes] = {"ca.pem": ca.public_bytes(pem)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = _certificate(who, key, (ca.subject, ca_key)).public_bytes(pem)
        encryption = (
            serialization.BestAvailableEncryption(b"key-password") if who == "client" else plain
        )
        files[f"{who}.key"] = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, encryption)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(directory / "server.pem"),
            "--tls-key-file", str(directory / "server.key"),
            "--tls-ca-cert-file", str(directory / "ca.pem"),
            "--tls-auth-clients", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert server.poll() is None, "redis-server refused --tls-port: built without TLS?"
            assert time.monotonic() < deadline, "redis-server did not listen on its TLS port"
            time.sleep(0.05)
        yield Tls(
            port,
            ca.public_bytes(pem).decode(),
            other.public_bytes(pem).decode(),
            directory / "client.pem",
            directory / "client.key",
            "key-password",
        )
    finally:
        server.terminate()
        server.wait(10)


async def test_every_tls_option_reaches_the_hot_path(tls_redis: Tls) -> None:
    """The client certificate, its key's password, the CA given as data, the hostname check,
    the minimum version and the ciphers: the auto-pipeline connects as redis-py does (the
    server refuses a client without the certificate), and refuses a server it must not trust."""

    def client(ca: str) -> Redis:
        return Redis.from_url(
            f"rediss://localhost:{tls_redis.port}",
            decode_responses=True,
            ssl_certfile=str(tls_redis.client_cert),
            ssl_keyfile=str(tls_redis.client_key),
            ssl_password=tls_redis.password,
            ssl_ca_data=ca,
            ssl_check_hostname=True,
            ssl_min_version=ssl.TLSVersion.TLSv1_2,
            ssl_ciphers="ECDHE+AESGCM",
        )

    trusting, wary = client(tls_redis.ca), client(tls_redis.other_ca)
    pipe, refused = AutoPipeline.like(trusting), AutoPipeline.like(wary)
    try:
        assert await trusting.ping()  # redis-py itself, for comparison
        assert await pipe.execute("PING") == "PONG"
        assert await pipe.evalsha("return ARGV[1]", ["k"], ["over TLS"]) == "over TLS"
        with pytest.raises(RedisConnectionError, match="could not connect"):
            await refused.execute("PING")  # the server's certificate is not from that CA
        # the TLS options tell shared pipelines apart
        assert shared_for(trusting, 5) is not shared_for(wary, 5)
    finally:
        for closing in (pipe, refused):
            await closing.aclose()
        for redis_client in (trusting, wary):
            await redis_client.aclose()
