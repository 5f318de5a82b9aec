"""Closing, cancelling and deadlines: the upstream exchange ends when the caller's interest does.

Closing the adapter's stream early or cancelling its consumer must close the
provider connection at once (the fake records the disconnect); the ``timeout``
bounds the whole exchange, including a provider that stalls mid-stream or never
answers; nothing listening is ``ProviderUnavailable``.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import collect, endpoint, params

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Endpoint, TextDelta
from rmllm_common import errors
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret

FORMATS = ["openai", "anthropic", "google"]  # one provider per wire format
SLOW = Scenario.stream(tuple(f" w{i}" for i in range(200)), delay=0.02)


@pytest.mark.parametrize("provider", FORMATS)
async def test_closing_the_stream_early_disconnects_upstream(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    ep = endpoint(fake, provider)
    fake.enqueue(SLOW)
    stream = adapter_for(ep.spec).stream_chat(http, ep, params(provider), 30)

    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]

    record = await fake.wait_finished()
    assert record.disconnected
    assert record.outcome == "disconnected"


@pytest.mark.parametrize("provider", FORMATS)
async def test_cancelling_the_consumer_disconnects_upstream(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    ep = endpoint(fake, provider)
    fake.enqueue(SLOW)
    got_text = asyncio.Event()

    async def consume() -> None:
        async for event in adapter_for(ep.spec).stream_chat(http, ep, params(provider), 30):
            if isinstance(event, TextDelta):
                got_text.set()

    task = asyncio.create_task(consume())
    await got_text.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = await fake.wait_finished()
    assert record.disconnected


@pytest.mark.parametrize("provider", FORMATS)
async def test_a_stall_mid_stream_ends_at_the_deadline(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    ep = endpoint(fake, provider)
    fake.enqueue(Scenario.stream(("one", "two", "three"), stall_at=600))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 0.5))

    assert isinstance(out.error, errors.DeadlineExceeded)
    assert out.error.provider == provider
    assert out.deltas  # text went out before the stall
    assert out.finished is None
    assert (await fake.wait_finished()).disconnected


async def test_a_provider_that_never_answers_ends_at_the_deadline(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario(hang=True))
    ep = endpoint(fake, "openrouter")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openrouter"), 0.3))
    assert isinstance(out.error, errors.DeadlineExceeded)
    assert out.error.code.name == "DEADLINE_EXCEEDED"
    assert out.deltas == []


async def test_nothing_listening_is_provider_unavailable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = default_registry().providers["anthropic"]
    ep = Endpoint(
        spec=spec, base_url=f"http://127.0.0.1:{port}/v1", api_key=Secret("sk-ant-api03-abcdefghijkl")
    )
    out = await collect(adapter_for(spec).stream_chat(http, ep, params("anthropic"), 5))
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert "cannot reach Anthropic" in out.error.message
    assert isinstance(out.error.__cause__, aiohttp.ClientConnectionError)


async def test_a_name_that_does_not_resolve_is_a_dns_failure_not_a_passing_fault(
    http: aiohttp.ClientSession,
) -> None:
    spec = default_registry().providers["openai"]
    ep = Endpoint(
        spec=spec, base_url="http://no-such-host.invalid/v1", api_key=Secret("sk-test-0123456789abcdef")
    )
    out = await collect(adapter_for(spec).stream_chat(http, ep, params("openai"), 5))
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert out.error.metadata == {"provider": "openai", "cause": "dns", "host": "no-such-host.invalid"}
    assert "'no-such-host.invalid'" in out.error.message and "does not resolve" in out.error.message
    assert "check the base URL" in out.error.message
    assert isinstance(out.error.__cause__, aiohttp.ClientConnectorDNSError)


async def test_a_completed_stream_leaves_the_connection_reusable(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    ep = endpoint(fake, "openai")
    for _ in range(3):
        out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai"), 5))
        assert out.finished is not None
    assert all(not r.disconnected and r.outcome == "answered" for r in fake.requests)
    assert len({r.peer for r in fake.requests}) == 1  # all three on one kept-alive connection
