"""The pipelined Redis client: one write per loop tick, replies in order, timeouts, reconnects.

Against a private ``redis-server`` (stoppable, and one with a password); nothing
here is timed except the reply timeout, which is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from testkit.redis import PrivateRedis

from llm_service.redis_pipe import PipelinedRedis, encode


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateRedis]:
    private = PrivateRedis()
    private.start()
    yield private
    private.stop()


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert encode([b"SET", "k", 12, 1.5]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n"


async def test_the_calls_of_one_tick_go_out_in_one_write(server: PrivateRedis) -> None:
    client = PipelinedRedis(server.url, timeout=2)
    try:
        assert await client.execute(b"PING") == b"PONG"
        pipe: Any = client._pipe
        writes: list[bytes] = []
        write = pipe._transport.write

        def counted(data: bytes) -> None:
            writes.append(data)
            write(data)

        pipe._transport.write = counted
        replies = await asyncio.gather(*(client.execute(b"INCR", "pipe:n") for _ in range(50)))
        assert replies == list(range(1, 51))  # in order, each to its own caller
        assert len(writes) == 1
    finally:
        await client.aclose()


async def test_errors_go_to_their_caller_and_a_cancelled_caller_keeps_the_connection_in_step(
    server: PrivateRedis,
) -> None:
    client = PipelinedRedis(server.url, timeout=2)
    try:
        await client.execute(b"SET", "step:k", "v")
        bad = client.execute(b"INCR", "step:k")  # not an integer
        cancelled = asyncio.ensure_future(client.execute(b"GET", "step:k"))
        good = client.execute(b"ECHO", "after")
        await asyncio.sleep(0)
        cancelled.cancel()
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], ResponseError)
        assert results[1] == b"after"
        assert await client.execute(b"GET", "step:k") == b"v"
    finally:
        await client.aclose()


async def test_a_script_unknown_to_redis_is_sent_in_full(server: PrivateRedis) -> None:
    client = PipelinedRedis(server.url, timeout=2)
    script = client.register_script("return {KEYS[1], ARGV[1]}")
    try:
        await client.execute(b"SCRIPT", b"FLUSH")
        assert await script(keys=["a"], args=["b"]) == [b"a", b"b"]
        assert await client.execute(b"SCRIPT", b"EXISTS", script.sha) == [1]
        assert await script(keys=["c"], args=["d"]) == [b"c", b"d"]
    finally:
        await client.aclose()


async def test_a_stopped_server_is_a_connection_error_until_it_is_back() -> None:
    private = PrivateRedis()
    private.start()
    client = PipelinedRedis(private.url, timeout=1)
    try:
        assert await client.execute(b"PING") == b"PONG"
        private.stop()
        for _ in range(3):
            with pytest.raises((RedisConnectionError, OSError)):
                await client.execute(b"PING")
        private.start()
        assert await client.execute(b"PING") == b"PONG"
    finally:
        await client.aclose()
        private.stop()


async def test_a_frozen_server_times_out_the_waiting_calls_and_the_next_call_reconnects() -> None:
    private = PrivateRedis()
    private.start()
    client = PipelinedRedis(private.url, timeout=0.3)
    pid = private.pid
    try:
        assert await client.execute(b"PING") == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            calls = [client.execute(b"PING") for _ in range(3)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, RedisTimeoutError) for r in results)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await client.execute(b"PING") == b"PONG"
    finally:
        await client.aclose()
        private.stop()


async def test_the_password_and_db_of_the_url_are_used() -> None:
    private = PrivateRedis(password="s3cret-test-only")
    private.start()
    url = f"redis://:s3cret-test-only@127.0.0.1:{private.port}/3"
    client = PipelinedRedis(url, timeout=1)
    try:
        await client.execute(b"SET", "db:k", "v")
        info = (await client.execute(b"CLIENT", b"INFO")).decode()
        assert " db=3 " in info
        wrong = PipelinedRedis(f"redis://:wrong@127.0.0.1:{private.port}/0", timeout=1)
        with pytest.raises(ResponseError):
            await wrong.execute(b"PING")
        await wrong.aclose()
    finally:
        await client.aclose()
        private.stop()


def test_it_works_on_uvloops_event_loop_the_one_the_llm_service_runs(server: PrivateRedis) -> None:
    uvloop = pytest.importorskip("uvloop")  # a dependency except on Windows

    async def ping_and_script() -> tuple[Any, Any]:
        client = PipelinedRedis(server.url, timeout=5)
        try:
            return await client.execute(b"PING"), await client.register_script("return 7")()
        finally:
            await client.aclose()

    # uvloop's transports do not subclass asyncio.Transport: the pipe once refused them,
    # and the LLM service (on uvloop) decided every limit without Redis, fail-open.
    assert uvloop.run(ping_and_script()) == (b"PONG", 7)
