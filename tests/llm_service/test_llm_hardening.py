"""Service-level bounds of issue 13: the unary answer cap, server-side timeouts that hold
without a caller deadline, undecodable requests, hostile answers through the whole service."""

from __future__ import annotations

import logging

import grpc
import pytest
from fakes.hostile import HostileProvider
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import auth, chat_request, llm_harness, rich_error, stream_request
from testkit.llm_scripted import ScriptedAdapter, answer

from llm_service.http import UpstreamLimits, new_http_session, request_timeout

KEY = "sk-live-0123456789abcdefghijklmnop"
HOSTILE_ENV = {
    "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",
    "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
    "RMLLM_RETRY_ATTEMPTS": "1",
    "RMLLM_UPSTREAM_READ_IDLE_SECONDS": "0.5",
    "RMLLM_UPSTREAM_MAX_CALL_SECONDS": "3",
    "RMLLM_UPSTREAM_MAX_RESPONSE_BYTES": "262144",
}


async def test_chat_collects_at_most_the_answer_limit_and_closes_upstream() -> None:
    adapter = ScriptedAdapter(scripts=[answer(*["x" * 60] * 5)])
    async with llm_harness({"RMLLM_CHAT_MAX_ANSWER_CHARS": "100"}, adapter=adapter) as llm:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        assert adapter.closed == adapter.opened == 1
        rich = rich_error(caught.value)
        assert rich.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rich.reason == "UPSTREAM_RESPONSE_TOO_LARGE"
        assert rich.metadata["provider"] == "openai"
        assert rich.retry_delay is None  # waiting does not help
        assert "100 characters" in rich.message and "StreamChat" in rich.message
        # StreamChat keeps nothing, so it has no such cap
        got = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth(), timeout=10)]
        assert "".join(m.delta for m in got) == "x" * 300


async def test_a_per_request_timeout_carries_every_bound() -> None:
    """aiohttp replaces the session's timeout with a per-request one: the connect and
    read-idle bounds must be in it, and the call bound caps the caller's deadline."""
    limits = UpstreamLimits(connect_timeout_seconds=4, read_idle_timeout_seconds=60, max_call_seconds=600)
    async with new_http_session(1, limits=limits) as session:
        no_deadline = request_timeout(session, None)
        assert (no_deadline.total, no_deadline.sock_connect, no_deadline.sock_read) == (600, 4, 60)
        assert request_timeout(session, 5.0).total == 5.0
        assert request_timeout(session, 5000.0).total == 600
        assert session.timeout.total == 600 and session.timeout.sock_read == 60
        # A deadline that ends the exchange before any silence could: no read-idle timer to
        # move on every read. One that leaves room for the silence keeps it.
        assert request_timeout(session, 30.0).sock_read is None
        assert request_timeout(session, 58.5).sock_read == 60


def _user(llm_vault: object, base_url: str) -> None:
    llm_vault.keys[("u-alice", "openai")] = StoredKey(KEY, base_url=base_url)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("behaviour", "code", "reason"),
    [
        ("stall", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_STREAM_TRUNCATED"),
        ("silent", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        ("deltas-slow", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        ("deltas-fast", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RESPONSE_TOO_LARGE"),
        ("comments", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RESPONSE_TOO_LARGE"),
        ("one-line", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RESPONSE_TOO_LARGE"),
        ("nested-json", grpc.StatusCode.UNKNOWN, "PROVIDER_ERROR"),
        ("redirect", grpc.StatusCode.UNKNOWN, "PROVIDER_ERROR"),
        ("huge-error", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        ("echo-key", grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_KEY_INVALID"),
    ],
)
@pytest.mark.parametrize("rpc", ["Chat", "StreamChat"])
async def test_hostile_answers_end_with_a_clear_status_without_a_caller_deadline(
    behaviour: str, code: grpc.StatusCode, reason: str, rpc: str
) -> None:
    async with (
        HostileProvider(slow_interval=0.05) as hostile,
        llm_harness(HOSTILE_ENV, real_adapters=True) as llm,
    ):
        _user(llm.vault, hostile.base_url(behaviour))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if rpc == "Chat":
                await llm.stub.Chat(chat_request(), metadata=auth())  # no deadline at all
            else:
                async for _ in llm.stub.StreamChat(stream_request(), metadata=auth()):
                    pass
        await hostile.wait_idle()
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (code, reason), rich
    assert rich.metadata["provider"] == "openai"
    assert "0123456789abcdef" not in rich.message and "Traceback" not in rich.message


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
)
@pytest.mark.parametrize("method", ["Chat", "StreamChat", "TestKey", "ListModels"])
async def test_an_undecodable_request_is_invalid_argument(payload: bytes, method: str) -> None:
    async with llm_harness() as llm:
        path = f"/realmultillm.llm.v1.LLMService/{method}"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method == "StreamChat":
                stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = llm.channel.unary_stream(path)
                async for _ in stream(payload, metadata=auth(), timeout=10):
                    pass
            else:
                unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = llm.channel.unary_unary(path)
                await unary(payload, metadata=auth(), timeout=10)
    rich = rich_error(caught.value)
    assert rich.code is grpc.StatusCode.INVALID_ARGUMENT
    assert rich.reason == "MALFORMED_REQUEST"
    assert "Error" not in rich.message  # no Python exception class names
    assert llm.vault.methods() == []  # refused before anything else


async def test_a_key_echoed_without_its_prefix_reaches_neither_the_status_nor_the_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = KEY
    caplog.set_level(logging.DEBUG)
    env = {**HOSTILE_ENV, "RMLLM_RETRY_ATTEMPTS": "3", "RMLLM_LOG_LEVEL": "debug"}
    async with HostileProvider(echo_status=503) as hostile, llm_harness(env, real_adapters=True) as llm:
        _user(llm.vault, hostile.base_url("echo-key"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=30)
        assert len(hostile.requests) == 3  # retried: the retry log lines were written
    rich = rich_error(caught.value)
    assert rich.reason == "PROVIDER_UNAVAILABLE"
    assert "[redacted]" in rich.message
    assert "retrying provider call" in caplog.text
    for text in (rich.message, caplog.text, repr(caught.value)):
        assert not any(key[i : i + 8] in text for i in range(len(key) - 7)), text
