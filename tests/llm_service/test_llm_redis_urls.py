"""The Redis URL forms of ``RMLLM_REDIS_URL`` beyond ``redis://``: ``unix://`` and ``rediss://`` (TLS).

Against private ``redis-server`` processes: one on a Unix socket with a password,
and TLS ones (server certificates from ``testkit.pki``; one requiring a client
certificate, one whose certificate names another host). A TLS URL is also given to
redis-py's own client, so both clients are seen to read its ``ssl_*`` options alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from testkit.llm_harness import auth, chat_request, llm_harness, rich_error
from testkit.pki import make_pki
from testkit.redis import PrivateRedis, free_port, redis_server

from llm_service.redis_pipe import PipelinedRedis

PASSWORD = "s3cret-test-only"


async def ping_and_script(url: str, timeout: float = 2) -> tuple[Any, Any]:
    """PING, then a script Redis does not know yet (EVALSHA, NOSCRIPT, EVAL), then by its SHA."""
    client = PipelinedRedis(url, timeout=timeout)
    try:
        pong = await client.execute(b"PING")
        await client.execute(b"SCRIPT", b"FLUSH")
        script = client.register_script("return ARGV[1] .. KEYS[1]")
        first = await script(keys=["k"], args=["v"])
        assert await client.execute(b"SCRIPT", b"EXISTS", script.sha) == [1]
        assert await script(keys=["k"], args=["v"]) == first
        return pong, first
    finally:
        await client.aclose()


async def refused(url: str, timeout: float = 2) -> BaseException:
    """The error a command gets on ``url``, which must come within the timeouts."""
    client = PipelinedRedis(url, timeout=timeout)
    try:
        async with asyncio.timeout(timeout * 3):
            with pytest.raises((RedisConnectionError, ResponseError)) as caught:
                await client.execute(b"PING")
    finally:
        await client.aclose()
    return caught.value


# unix://


@pytest.fixture(scope="module")
def sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("redis") / "r.sock"
    args = ("--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700", "--requirepass", PASSWORD)
    with redis_server(*args, listening=path):
        yield path


async def test_a_unix_socket_url_with_its_password_and_db(sock: Path) -> None:
    url = f"unix://:{PASSWORD}@{sock}?db=3"
    assert await ping_and_script(url) == (b"PONG", b"vk")
    client = PipelinedRedis(url, timeout=2)
    try:
        assert " db=3 " in (await client.execute(b"CLIENT", b"INFO")).decode()
    finally:
        await client.aclose()


async def test_the_password_may_be_a_query_option_as_redis_py_reads_it(sock: Path) -> None:
    client = PipelinedRedis(f"unix://{sock}?db=2&password={PASSWORD}", timeout=2)
    try:
        assert " db=2 " in (await client.execute(b"CLIENT", b"INFO")).decode()
    finally:
        await client.aclose()


async def test_a_wrong_or_missing_password_on_a_unix_socket_is_refused(sock: Path) -> None:
    assert "WRONGPASS" in str(await refused(f"unix://:wrong@{sock}"))
    assert "NOAUTH" in str(await refused(f"unix://{sock}"))


async def test_a_missing_unix_socket_is_a_connection_error(tmp_path: Path) -> None:
    error = await refused(f"unix://{tmp_path / 'none.sock'}")
    assert isinstance(error, RedisConnectionError)


def test_a_unix_url_without_a_path_is_refused_not_read_as_localhost() -> None:
    with pytest.raises(ValueError, match="socket's path"):
        PipelinedRedis("unix://", timeout=1)
    with pytest.raises(ValueError, match="socket's path"):
        PipelinedRedis("unix://redis.sock", timeout=1)  # a host, not a path: unix:///abs/path


async def test_the_llm_service_shares_its_limits_through_a_unix_socket_url(sock: Path) -> None:
    env = {
        "RMLLM_REDIS_URL": f"unix://:{PASSWORD}@{sock}?db=4",
        "RMLLM_REDIS_PREFIX": "unixtest:",
        "RMLLM_REDIS_FAILURE_MODE": "closed",  # without Redis the first call fails too
        "RMLLM_CHAT_RATE_PER_MINUTE": "1",
        "RMLLM_CHAT_BURST": "1",
    }
    async with llm_harness(env) as llm:
        await llm.stub.Chat(chat_request(), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth())
        assert rich_error(caught.value).reason == "RATE_LIMITED"
    admin = redis.Redis(unix_socket_path=str(sock), password=PASSWORD, db=4)
    try:
        assert admin.keys("unixtest:*")  # the bucket, in the URL's db
    finally:
        admin.close()


# rediss://


@dataclass(frozen=True)
class Tls:
    dir: Path
    ca: Path
    port: int  # a server with the certificate of localhost and 127.0.0.1, no client certificates

    def url(self, port: int | None = None, host: str = "127.0.0.1", **options: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"rediss://{host}:{port or self.port}/0" + (f"?{query}" if query else "")


def tls_server(directory: Path, cert: str = "server", auth_clients: str = "no") -> tuple[int, Any]:
    port = free_port()
    args = (
        *("--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port)),
        *(
            "--tls-cert-file",
            str(directory / f"{cert}.crt"),
            "--tls-key-file",
            str(directory / f"{cert}.key"),
        ),
        *("--tls-ca-cert-file", str(directory / "ca.crt"), "--tls-auth-clients", auth_clients),
    )
    return port, redis_server(*args, listening=port)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    pki = make_pki()
    directory = tmp_path_factory.mktemp("tls")
    for name in ("ca", "server", "client", "named_server"):
        getattr(pki, name).write(directory, name)
    port, server = tls_server(directory)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(server)
        except AssertionError as exc:  # a Redis built without TLS refuses the tls-* directives
            pytest.skip(f"this redis-server cannot serve TLS: {exc}")
        yield Tls(directory, directory / "ca.crt", port)


def redis_py_pings(url: str) -> bool:
    """Whether redis-py's own client, given the same URL, gets its PING answered."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


async def test_a_tls_url_with_the_ca_of_the_server(tls: Tls) -> None:
    for host in ("127.0.0.1", "localhost"):
        url = tls.url(host=host, ssl_ca_certs=str(tls.ca))
        assert await ping_and_script(url) == (b"PONG", b"vk")
        assert redis_py_pings(url)


async def test_an_unverifiable_server_is_a_clear_connection_error_soon(tls: Tls) -> None:
    url = tls.url(ssl_cert_reqs="required")  # the system's CAs: not ours
    error = await refused(url, timeout=1)
    assert isinstance(error, RedisConnectionError) and not isinstance(error, ssl.SSLError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert not redis_py_pings(url)


async def test_ssl_cert_reqs_none_skips_verification(tls: Tls) -> None:
    url = tls.url(ssl_cert_reqs="none")
    assert (await ping_and_script(url))[0] == b"PONG"
    assert redis_py_pings(url)


async def test_the_host_name_is_checked_unless_ssl_check_hostname_is_false(tls: Tls) -> None:
    port, server = tls_server(tls.dir, cert="named_server")  # names rmllm.internal only
    with server:
        checked = tls.url(port, ssl_ca_certs=str(tls.ca))
        assert "match" in str(await refused(checked)).lower()  # as redis-py >= 6 (5 did not check)
        unchecked = tls.url(port, ssl_ca_certs=str(tls.ca), ssl_check_hostname="false")
        assert (await ping_and_script(unchecked))[0] == b"PONG"
        assert redis_py_pings(unchecked)


async def test_a_server_requiring_client_certificates_gets_the_urls(tls: Tls) -> None:
    port, server = tls_server(tls.dir, auth_clients="yes")
    with server:
        anonymous = tls.url(port, ssl_ca_certs=str(tls.ca))
        assert isinstance(await refused(anonymous), RedisConnectionError)
        assert not redis_py_pings(anonymous)
        client = tls.url(
            port,
            ssl_ca_certs=str(tls.ca),
            ssl_certfile=str(tls.dir / "client.crt"),
            ssl_keyfile=str(tls.dir / "client.key"),
        )
        assert await ping_and_script(client) == (b"PONG", b"vk")
        assert redis_py_pings(client)
        key = serialization.load_pem_private_key((tls.dir / "client.key").read_bytes(), password=None)
        locked = tls.dir / "client-locked.key"
        locked.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"key-pass-test-only"),
            )
        )
        with_password = tls.url(
            port,
            ssl_ca_certs=str(tls.ca),
            ssl_certfile=str(tls.dir / "client.crt"),
            ssl_keyfile=str(locked),
            ssl_password="key-pass-test-only",
        )
        assert (await ping_and_script(with_password))[0] == b"PONG"
        assert redis_py_pings(with_password)


async def test_tls_to_a_plain_port_and_plain_to_a_tls_port_fail_within_the_timeouts(
    tls: Tls,
) -> None:
    async def fails_in_time(url: str) -> None:
        client = PipelinedRedis(url, timeout=0.5)
        try:
            async with asyncio.timeout(3):
                with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                    await client.execute(b"PING")
        finally:
            await client.aclose()

    plain = PrivateRedis()
    plain.start()
    try:
        await fails_in_time(tls.url(plain.port, ssl_ca_certs=str(tls.ca)))
    finally:
        plain.stop()
    await fails_in_time(f"redis://127.0.0.1:{tls.port}/0")


def test_tls_works_and_fails_alike_on_uvloop(tls: Tls) -> None:
    uvloop = pytest.importorskip("uvloop")  # the LLM service's event loop

    async def both() -> tuple[Any, BaseException]:
        good = await ping_and_script(tls.url(ssl_ca_certs=str(tls.ca)))
        return good, await refused(tls.url(), timeout=1)

    good, bad = uvloop.run(both())
    assert good == (b"PONG", b"vk")
    assert isinstance(bad, RedisConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(bad)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
        ("rediss://127.0.0.1:6380/0?ssl_validate_ocsp=true", "ssl_validate_ocsp"),
        ("rediss://127.0.0.1:6380/0?ssl_keyfile=/k.pem", "ssl_certfile"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "rediss://"),  # TLS was meant, not given
        ("unix:///tmp/r.sock?ssl_cert_reqs=required", "rediss://"),
    ],
)
def test_tls_options_that_would_be_ignored_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelinedRedis(url, timeout=1)
