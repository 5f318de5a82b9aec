"""Retries of transient provider failures: which, how often, how long, and never when.

Waits are read from an injected ``sleep`` (and, for deadlines, a fake clock that
the sleep advances): nothing here sleeps for real or times anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from testkit.llm_harness import LLMHarness, auth, chat_request, llm_harness, rich_error, stream_request
from testkit.llm_scripted import ScriptedAdapter, answer

from llm_service.adapters.base import ChatEvent, ChatParams, Endpoint, Message, TextDelta
from llm_service.deadline import Deadline
from llm_service.retrying import RetryPolicy, stream_with_retries
from rmllm_common import errors
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret


def unavailable() -> errors.ProviderUnavailable:
    return errors.ProviderUnavailable("503 from the provider", provider="openai")


async def test_transient_failures_are_retried_with_growing_jittered_waits(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[unavailable()], [unavailable()], answer("fine")]
    reply = await llm.stub.Chat(chat_request(), metadata=auth())
    assert reply.content == "fine"
    assert len(llm.adapter.calls) == 3
    assert llm.adapter.closed == llm.adapter.opened == 3
    first, second = llm.sleeps
    assert 0.25 <= first <= 0.5  # base 0.5 * [0.5, 1]
    assert 0.5 <= second <= 1.0  # base 0.5 * 2 * [0.5, 1]


async def test_attempts_are_bounded_and_the_last_error_is_raised(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[unavailable()]]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth())
    assert rich_error(caught.value).reason == "PROVIDER_UNAVAILABLE"
    assert len(llm.adapter.calls) == 3  # RMLLM_RETRY_ATTEMPTS default
    assert len(llm.sleeps) == 2


async def test_retry_after_is_honoured(llm: LLMHarness) -> None:
    limited = errors.ProviderRateLimited("429", provider="openai", retry_after=2.5)
    llm.adapter.scripts = [[limited], answer("ok")]
    got = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
    assert [m.WhichOneof("event") for m in got] == ["delta", "done"]
    assert llm.sleeps == [2.5]


async def test_retry_after_over_the_cap_is_not_waited_for(llm: LLMHarness) -> None:
    limited = errors.ProviderRateLimited("429", provider="openai", retry_after=60.0)
    llm.adapter.scripts = [[limited], answer("ok")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth())
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason, rich.retry_delay) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
        60.0,
    )
    assert len(llm.adapter.calls) == 1
    assert llm.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        errors.ProviderQuotaExhausted("insufficient_quota", provider="openai"),
        errors.ProviderKeyInvalid("401", provider="openai"),
        errors.UpstreamStreamTruncated("cut", provider="openai"),
        errors.InvalidRequest("bad model", provider="openai"),
        errors.ProviderError("odd", provider="openai"),
        errors.DeadlineExceeded("timeout", provider="openai"),
    ],
    ids=lambda e: e.reason,
)
async def test_other_errors_are_never_retried(llm: LLMHarness, error: errors.RmllmError) -> None:
    llm.adapter.scripts = [[error], answer("never")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth())
    assert rich_error(caught.value).reason == error.reason
    assert len(llm.adapter.calls) == 1
    assert llm.sleeps == []


async def test_no_retry_after_the_first_delta(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[TextDelta("x"), unavailable()], answer("never")]
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in llm.stub.StreamChat(stream_request(), metadata=auth()):
            got.append(message.delta)
    assert got == ["x"]
    assert rich_error(caught.value).reason == "PROVIDER_UNAVAILABLE"
    assert len(llm.adapter.calls) == 1


async def test_attempts_setting() -> None:
    async with llm_harness({"RMLLM_RETRY_ATTEMPTS": "1"}) as llm:
        llm.adapter.scripts = [[unavailable()], answer("never")]
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request(), metadata=auth())
        assert len(llm.adapter.calls) == 1


class FakeClock:
    """A monotonic clock that only the fake sleep moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def _run(adapter: ScriptedAdapter, policy: RetryPolicy, deadline: Deadline) -> list[ChatEvent]:
    spec = default_registry().resolve("openai")
    endpoint = Endpoint(spec, spec.base_url, Secret("sk-test"))
    params = ChatParams("gpt-4o-mini", (Message("user", "hi"),))
    async with aiohttp.ClientSession() as http:

        def open_stream(timeout: float | None) -> AsyncIterator[ChatEvent]:
            return adapter.stream_chat(http, endpoint, params, timeout)

        return [e async for e in stream_with_retries(open_stream, policy, deadline, "openai")]


async def test_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=8.0, sleep=clock.sleep, random=lambda: 1.0)
    adapter = ScriptedAdapter(scripts=[[unavailable()]])
    with pytest.raises(errors.ProviderUnavailable):
        await _run(adapter, policy, Deadline.after(1.2, clock))
    # waits 0.5 (to t=0.5), then 1.0 would end at 1.5 > 1.2: stop with the last error
    assert clock.sleeps == [0.5]
    assert [c.timeout for c in adapter.calls] == [pytest.approx(1.2), pytest.approx(0.7)]


async def test_retry_after_past_the_deadline_stops_at_once() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=5, sleep=clock.sleep)
    limited = errors.ProviderRateLimited("429", provider="openai", retry_after=3.0)
    adapter = ScriptedAdapter(scripts=[[limited], answer("never")])
    with pytest.raises(errors.ProviderRateLimited):
        await _run(adapter, policy, Deadline.after(2.0, clock))
    assert clock.sleeps == []
    assert len(adapter.calls) == 1


async def test_backoff_is_capped_and_jittered() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=3.0, sleep=clock.sleep, random=lambda: 0.0)
    adapter = ScriptedAdapter(scripts=[[unavailable()]] * 5 + [answer("ok")])
    events = await _run(adapter, policy, Deadline.after(None, clock))
    assert [type(e).__name__ for e in events] == ["TextDelta", "Finished"]
    assert clock.sleeps == [0.5, 1.0, 1.5, 1.5, 1.5]  # min(3, 2**n) * 0.5
    assert adapter.closed == adapter.opened == 6
