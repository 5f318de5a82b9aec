"""Shared limits on Redis: one script per decision, shared by every process, and outages.

Against the real Redis at 127.0.0.1:6379 with a key prefix per test; the outage
tests run a private ``redis-server`` and stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import ALICE, BOB, auth, chat_request, llm_harness, rich_error, stream_request
from testkit.llm_scripted import STALL, answer
from testkit.redis import SHARED_URL, PrivateRedis, shared_prefix

from llm_service import metrics
from llm_service.adapters.base import TextDelta
from llm_service.ratelimit import LocalStreamSlots, RateLimiter
from llm_service.redis_limits import RedisRateLimiter, RedisStreamSlots, SharedStore
from rmllm_common.errors import RateLimited, Unavailable


@pytest.fixture
def prefix() -> Iterator[str]:
    with shared_prefix() as value:
        yield value


def store(prefix: str, url: str = SHARED_URL, mode: str = "open") -> SharedStore:
    return SharedStore(url, prefix=prefix, failure_mode=mode)


async def test_the_rate_is_shared_by_every_process(prefix: str) -> None:
    stores = [store(prefix), store(prefix)]  # two LLM processes
    limiters = [RedisRateLimiter(s, "chat", "chat", 60, 3) for s in stores]
    try:
        for i in range(3):
            await limiters[i % 2].take("u-1")
        for limiter in limiters:
            with pytest.raises(RateLimited) as caught:
                await limiter.take("u-1")
            assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 1.0
        await limiters[0].take("u-2")  # another user has a bucket of its own
    finally:
        for s in stores:
            await s.close()


async def test_a_limit_set_in_redis_applies_without_a_restart(prefix: str) -> None:
    shared = store(prefix)
    limiter = RedisRateLimiter(shared, "chat", "chat", 60, 1)
    admin = redis.Redis.from_url(SHARED_URL)
    try:
        await limiter.take("u-1")
        with pytest.raises(RateLimited, match="60 a minute"):
            await limiter.take("u-1")
        admin.hset(prefix + "limits", mapping={"chat_burst": 5, "chat_rate_per_minute": 120})
        for _ in range(3):
            await limiter.take("u-1")
        with pytest.raises(RateLimited, match="120 a minute"):
            await limiter.take("u-1")
        admin.hset(prefix + "limits", "chat_rate_per_minute", "0")  # 0: no limit
        for _ in range(10):
            await limiter.take("u-1")
    finally:
        admin.close()
        await shared.close()


async def test_stream_slots_are_shared_released_and_expire(prefix: str) -> None:
    one, two = store(prefix), store(prefix)
    slots_one = RedisStreamSlots(one, 2, lease_seconds=1.0)
    slots_two = RedisStreamSlots(two, 2, lease_seconds=1.0)
    try:
        held = [await slots_one.acquire("u-1"), await slots_two.acquire("u-1")]
        with pytest.raises(RateLimited, match="too many open streams"):
            await slots_one.acquire("u-1")
        await held[0].release()
        await held[0].release()  # twice is harmless
        held[0] = await slots_two.acquire("u-1")
        # Leases are renewed while held: still full after several lease times.
        await asyncio.sleep(2.5)
        with pytest.raises(RateLimited):
            await slots_one.acquire("u-1")
        # A process that dies stops renewing: its slots free themselves within a lease.
        await slots_two.close()
        await two.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                lease = await slots_one.acquire("u-1")
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the dead process's slots were never freed"
                await asyncio.sleep(0.1)
        await lease.release()
    finally:
        await slots_one.close()
        await one.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_redis_outage_fails_open_or_closed_logged_once(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedis()
    server.start()
    shared = store("outage:", server.url, mode)
    counted = metrics.enable()  # the outage and the calls decided without Redis are metrics
    outages_before = counted.redis_outages._value.get()
    without_before = counted.calls_without_redis._value.get()
    limiter = RedisRateLimiter(shared, "chat", "chat", 60, 1)
    slots = RedisStreamSlots(shared, 1, lease_seconds=30)
    try:
        await limiter.take("u-1")
        with pytest.raises(RateLimited):
            await limiter.take("u-1")
        server.stop()
        caplog.set_level(logging.INFO, logger="llm_service.redis_limits")
        for _ in range(20):
            if mode == "open":
                await limiter.take("u-1")  # unlimited while Redis is away
                await (await slots.acquire("u-1")).release()
            else:
                with pytest.raises(Unavailable) as caught:
                    await limiter.take("u-1")
                assert caught.value.reason == "RATE_LIMITER_UNAVAILABLE"
                assert caught.value.retry_after is not None
                with pytest.raises(Unavailable):
                    await slots.acquire("u-1")
        down = [r for r in caplog.records if getattr(r, "event", "") == "redis_down"]
        assert len(down) == 1
        assert shared.stats.outages == 1 and shared.stats.calls_without_redis == 40
        assert counted.redis_outages._value.get() - outages_before == 1
        assert counted.calls_without_redis._value.get() - without_before == 40
        # Back: limits are enforced again (after at most the retry interval), logged once.
        server.start()
        deadline = time.monotonic() + 5
        while shared.down:
            assert time.monotonic() < deadline
            with contextlib.suppress(Unavailable, RateLimited):
                await limiter.take("u-2")
            await asyncio.sleep(0.1)
        assert [getattr(r, "event", "") for r in caplog.records].count("redis_up") == 1
        await limiter.take("u-3")
        with pytest.raises(RateLimited):
            await limiter.take("u-3")
    finally:
        await slots.close()
        await shared.close()
        server.stop()


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
async def test_the_llm_service_limits_open_streams_and_frees_them_however_they_end(
    prefix: str, shared: bool
) -> None:
    env = {"RMLLM_MAX_CONCURRENT_STREAMS": "1"}
    if shared:
        env |= {"RMLLM_REDIS_URL": SHARED_URL, "RMLLM_REDIS_PREFIX": prefix}
    admin = redis.Redis.from_url(SHARED_URL)

    def open_in_redis() -> int:
        count: Any = admin.zcard(prefix + "streams:u-alice") if shared else 0
        return int(count)

    try:
        async with llm_harness(env) as llm:
            llm.adapter.scripts = [[TextDelta("a"), STALL]]
            held = llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))
            assert (await held.read()).delta == "a"
            assert open_in_redis() == (1 if shared else 0)
            second = llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await second.read()
            error = rich_error(caught.value)
            assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert error.metadata["limit"] == "concurrent_streams"
            # Another user is not affected.
            llm.vault.keys[("u-bob", "openai")] = StoredKey("sk-bob-key-0123456789")
            bob = llm.stub.StreamChat(stream_request(), metadata=auth(BOB))
            assert (await bob.read()).delta == "a"
            bob.cancel()
            # The caller cancels: the slot comes back.
            held.cancel()
            await llm.until(lambda: llm.adapter.closed >= 2)
            llm.adapter.scripts = [answer("done")]
            await llm.until(lambda: open_in_redis() == 0)
            replies = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))]
            assert replies[-1].HasField("done")
            assert open_in_redis() == 0  # released at the end of a finished stream too
    finally:
        admin.close()


async def test_the_llm_service_shares_the_chat_limit_through_redis(prefix: str) -> None:
    env = {
        "RMLLM_REDIS_URL": SHARED_URL,
        "RMLLM_REDIS_PREFIX": prefix,
        "RMLLM_CHAT_RATE_PER_MINUTE": "1",
        "RMLLM_CHAT_BURST": "2",
    }
    async with llm_harness(env) as one, llm_harness(env) as two:
        await one.stub.Chat(chat_request(), metadata=auth())
        await two.stub.Chat(chat_request(), metadata=auth())
        for llm in (one, two):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await llm.stub.Chat(chat_request(), metadata=auth())
            assert rich_error(caught.value).reason == "RATE_LIMITED"


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
async def test_a_stream_takes_its_rate_token_and_slot_together(prefix: str, shared: bool) -> None:
    """The slot is checked first: a stream refused for its slot takes no rate token,
    and one refused for its rate holds no slot."""
    one = store(prefix)
    limiter: Any = RedisRateLimiter(one, "chat", "chat", 1, 2) if shared else RateLimiter("chat", 1, 2)
    slots: Any = RedisStreamSlots(one, 1, lease_seconds=30) if shared else LocalStreamSlots(1)
    try:
        held = await slots.admit("u-1", limiter)  # token 1 of 2, the one slot
        for _ in range(3):
            with pytest.raises(RateLimited, match="too many open streams"):
                await slots.admit("u-1", limiter)
        await held.release()
        held = await slots.admit("u-1", limiter)  # token 2: the refusals took none
        await held.release()
        with pytest.raises(RateLimited, match="too many chat requests") as caught:
            await slots.admit("u-1", limiter)
        assert caught.value.retry_after is not None and caught.value.retry_after > 1
        other = RedisRateLimiter(one, "other", "other", 60, 5) if shared else RateLimiter("other", 60, 5)
        lease = await slots.admit("u-1", other)  # the rate refusal held no slot
        await lease.release()
    finally:
        if shared:
            await slots.close()
        await one.close()


async def test_a_stream_admission_is_one_redis_round_trip(prefix: str) -> None:
    shared = store(prefix)
    limiter = RedisRateLimiter(shared, "chat", "chat", 60, 5)
    slots = RedisStreamSlots(shared, 2, lease_seconds=30)
    calls: list[bytes] = []
    execute = shared.client.execute

    async def counted(*args: Any) -> Any:
        calls.append(args[0])
        return await execute(*args)

    shared.client.execute = counted
    try:
        lease = await slots.admit("u-1", limiter)
        assert calls == [b"EVALSHA"]
        await lease.release()
    finally:
        await slots.close()
        await shared.close()


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
async def test_a_stream_refused_for_its_slot_costs_the_caller_no_rate_token(
    prefix: str, shared: bool
) -> None:
    env = {"RMLLM_MAX_CONCURRENT_STREAMS": "1", "RMLLM_CHAT_RATE_PER_MINUTE": "1", "RMLLM_CHAT_BURST": "2"}
    if shared:
        env |= {"RMLLM_REDIS_URL": SHARED_URL, "RMLLM_REDIS_PREFIX": prefix}
    async with llm_harness(env) as llm:
        llm.adapter.scripts = [[TextDelta("a"), STALL]]
        held = llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))
        assert (await held.read()).delta == "a"
        for _ in range(2):
            refused = llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await refused.read()
            assert rich_error(caught.value).metadata["limit"] == "concurrent_streams"
        held.cancel()
        await llm.until(lambda: llm.adapter.closed >= 1)
        llm.adapter.scripts = [answer("done")]
        deadline = time.monotonic() + 5
        while True:  # the cancelled stream's slot comes back as the server notices the cancel
            try:
                replies = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth(ALICE))]
                break
            except grpc.aio.AioRpcError as exc:
                assert rich_error(exc).metadata.get("limit") == "concurrent_streams"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert replies[-1].HasField("done")


async def test_a_stream_admission_reads_the_limits_set_in_redis(prefix: str) -> None:
    shared = store(prefix)
    limiter = RedisRateLimiter(shared, "chat", "chat", 60, 2)
    slots = RedisStreamSlots(shared, 0, lease_seconds=30)  # no stream limit in the settings
    admin = redis.Redis.from_url(SHARED_URL)
    try:
        held = [await slots.admit("u-1", limiter) for _ in range(2)]  # no slot needed, the rate still counts
        assert slots.held() == 0
        with pytest.raises(RateLimited, match="too many chat requests"):
            await slots.admit("u-1", limiter)
        admin.hset(prefix + "limits", mapping={"max_concurrent_streams": 1, "chat_burst": 10})
        held = [await slots.admit("u-1", limiter)]
        assert slots.held() == 1
        with pytest.raises(RateLimited, match="the limit is 1 at once"):
            await slots.admit("u-1", limiter)
        for lease in held:
            await lease.release()
    finally:
        admin.close()
        await slots.close()
        await shared.close()
