"""Per-user rate limits: token buckets on Chat/StreamChat and on TestKey.

A fake clock drives the buckets, so the RetryInfo delay is exact and refills are
instant.
"""

from __future__ import annotations

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import (
    ALICE,
    BOB,
    auth,
    chat_request,
    llm_harness,
    rich_error,
    stream_request,
    user_token,
)

from llm_service.ratelimit import RateLimiter
from rmllm_common.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_chat_limit_per_user_with_retry_info() -> None:
    clock = Clock()
    env = {"RMLLM_CHAT_RATE_PER_MINUTE": "60", "RMLLM_CHAT_BURST": "2"}
    async with llm_harness(env, clock=clock) as llm:
        llm.vault.users[user_token("alice_second_token")] = "u-alice"
        await llm.stub.Chat(chat_request(), metadata=auth())
        _ = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
        for token in (ALICE, user_token("alice_second_token")):  # the limit follows the user, not the token
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await llm.stub.Chat(chat_request(), metadata=auth(token))
            rich = rich_error(caught.value)
            assert (rich.code, rich.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert rich.retry_delay == pytest.approx(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in llm.stub.StreamChat(stream_request(), metadata=auth()):
                pass
        assert rich_error(caught.value).reason == "RATE_LIMITED"
        assert len(llm.adapter.calls) == 2
        await llm.stub.Chat(chat_request(provider="llama"), metadata=auth(BOB))  # bob has his own bucket
        clock.now += 0.5
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth())
        assert rich_error(caught.value).retry_delay == pytest.approx(0.5)
        clock.now += 0.5
        await llm.stub.Chat(chat_request(), metadata=auth())


async def test_testkey_limit_is_separate_and_strict() -> None:
    clock = Clock()
    env = {"RMLLM_TESTKEY_RATE_PER_MINUTE": "6", "RMLLM_TESTKEY_BURST": "1"}
    async with llm_harness(env, clock=clock) as llm:
        request = llm_pb2.TestKeyRequest(provider="openai", api_key="sk-some-candidate-key-1234")
        await llm.stub.TestKey(request, metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.TestKey(request, metadata=auth())
        rich = rich_error(caught.value)
        assert (rich.code, rich.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert rich.retry_delay == pytest.approx(10.0)
        assert "sk-some-candidate" not in rich.message
        assert len(llm.adapter.probe_calls) == 1  # the limited call never reached the provider
        await llm.stub.Chat(chat_request(), metadata=auth())  # chat has its own bucket


async def test_zero_rate_disables_the_limit() -> None:
    async with llm_harness({"RMLLM_CHAT_RATE_PER_MINUTE": "0", "RMLLM_CHAT_BURST": "1"}) as llm:
        for _ in range(5):
            await llm.stub.Chat(chat_request(), metadata=auth())


def test_bucket_refills_to_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter("chat", 60, 3, clock=clock)
    for _ in range(3):
        limiter.take_now("u")
    with pytest.raises(RateLimited):
        limiter.take_now("u")
    clock.now += 3600
    for _ in range(3):
        limiter.take_now("u")
    with pytest.raises(RateLimited) as caught:
        limiter.take_now("u")
    assert caught.value.retry_after == pytest.approx(1.0)


def test_bucket_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_service import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 10)
    clock = Clock()
    limiter = RateLimiter("chat", 60, 2, clock=clock)
    for user in range(50):
        limiter.take_now(f"u{user}")
        clock.now += 0.01
    assert len(limiter._buckets) <= 10
