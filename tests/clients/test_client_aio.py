"""The asyncio client against the fake services: same calls, same types, same errors."""

from __future__ import annotations

import asyncio

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

import clients
from clients import AsyncClient, FinishReason, TestKeyReason
from rmllm_common import errors


async def test_key_management_round_trip(aclient: AsyncClient, fake: FakeServers) -> None:
    config = await aclient.put_config("openai", "sk-good-secret-wxyz", temperature=0.7)
    assert (config.provider, config.key_hint, config.settings.temperature) == ("openai", "wxyz", 0.7)
    assert (await aclient.get_config("openai-api")) == config
    updated = await aclient.update_config("openai", max_tokens=64)
    assert updated.settings.max_tokens == 64
    assert list(fake.state.calls[-1][1].update_mask.paths) == ["settings.max_tokens"]
    assert [c.provider for c in await aclient.list_configs()] == ["openai"]
    assert await aclient.delete_config("openai") == "openai"
    with pytest.raises(clients.ConfigNotFound):
        await aclient.get_config("openai")


async def test_chat_and_stream(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    result = await aclient.chat("openai", "hi")
    assert (result.text, result.finish_reason, result.usage.total_tokens) == (
        "Hello world",
        FinishReason.STOP,
        46,
    )
    async with aclient.stream_chat("openai", "hi") as stream:
        deltas = [delta async for delta in stream]
    assert deltas == ["Hel", "lo", " world"]
    assert stream.result.text == "Hello world"
    assert stream.result.usage.cost_usd == 0.000022
    assert {md["authorization"] for _, _, md in fake.state.calls} == {f"Bearer {TOKEN}"}


async def test_stream_final_and_not_finished(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    stream = aclient.stream_chat("openai", "hi")
    with pytest.raises(RuntimeError, match="not finished"):
        _ = stream.result
    assert await stream.__anext__() == "Hel"
    assert (await stream.final()).text == "Hello world"


async def test_stream_errors_are_typed(aclient: AsyncClient, fake: FakeServers) -> None:
    with pytest.raises(clients.KeyNotConfigured):
        await aclient.stream_chat("openai", "hi").final()
    fake.store("openai", "sk-good-1234")
    fake.state.stream_error = errors.UpstreamStreamTruncated("cut short", provider="openai")
    stream = aclient.stream_chat("openai", "hi")
    with pytest.raises(clients.UpstreamStreamTruncated):
        await stream.final()
    assert stream.text == "Hello world"


async def test_stream_cancel_reaches_the_server(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.stream_hang = True
    stream = aclient.stream_chat("openai", "hi")
    assert await stream.__anext__() == "Hel"
    asyncio.get_running_loop().call_later(0.05, stream.cancel)  # while the next read waits
    assert [d async for d in stream] == []
    assert stream.cancelled
    with pytest.raises(clients.Cancelled):
        _ = stream.result
    assert await asyncio.to_thread(fake.wait_cancelled)


async def test_errors_carry_details(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.state.fail("Chat", errors.ProviderRateLimited("429", provider="openai", retry_after=3))
    fake.store("openai", "sk-good-1234")
    with pytest.raises(clients.ProviderRateLimited) as info:
        await aclient.chat("openai", "hi")
    assert (info.value.retry_after, info.value.provider) == (3.0, "openai")
    with pytest.raises(clients.UnknownProvider) as bad:
        await aclient.put_config("nope", "sk-1234567890")
    assert [v.field for v in bad.value.field_violations] == ["provider"]
    async with AsyncClient("rmk_wrong", llm_target=fake.llm_target, vault_target=fake.vault_target) as c:
        with pytest.raises(clients.Unauthenticated):
            await c.providers()


async def test_reads_are_retried_and_test_key_is_not(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.state.fail("ListProviders", errors.Unavailable("blip"))
    assert [p.id for p in await aclient.providers()] == ["anthropic", "llama", "openai"]
    fake.state.fail("TestKey", errors.Unavailable("blip"))
    with pytest.raises(clients.Unavailable):
        await aclient.test_key("openai", "sk-good-1")
    assert fake.state.methods() == ["ListProviders", "ListProviders", "TestKey"]
    result = await aclient.test_key("openai", "sk-good-1")
    assert result.reason is TestKeyReason.VALID
    models = await aclient.models("openai")
    assert models.models[0].id == "gpt-4o-mini"
