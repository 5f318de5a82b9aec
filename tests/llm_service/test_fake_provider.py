"""The fake provider itself: as a process driven over HTTP, its fast and slow modes, its scenarios.

The adapter tests trust the fake; these check the parts they do not exercise:
the subprocess entry point and control API that service and benchmark tests use,
non-streamed answers, queue routing and the recording of requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import KEYS, collect, params
from fakes.server import provider_of
from testkit import procs

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Endpoint
from rmllm_common import errors
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret


@contextmanager
def fake_process(*flags: str) -> Iterator[procs.Service]:
    """``python -m fakes.server`` as the service and benchmark tests start it."""
    service = procs.start(["fakes.server", "--port", "0", *flags], {"PYTHONPATH": "tests"})
    try:
        yield service
    finally:
        assert service.stop() == 0, service.logs


@pytest.fixture
def process() -> Iterator[procs.Service]:
    with fake_process() as service:
        yield service


def at(service: procs.Service, provider: str) -> Endpoint:
    spec = default_registry().providers[provider]
    base = f"http://{service.address}{urlsplit(spec.base_url).path}"
    return Endpoint(spec=spec, base_url=base, api_key=Secret(KEYS[provider]))


async def test_process_is_driven_by_the_control_api(
    process: procs.Service, http: aiohttp.ClientSession
) -> None:
    control = f"http://{process.address}/_fake"
    scenarios = [
        {"canned": ["openai", "bad_key"]},
        {"transcript": "anthropic_basic", "chunks": [3]},
        {"json": {"error": {"message": "down"}}, "status": 503, "route": "get"},
    ]
    async with http.post(f"{control}/scenarios", json=scenarios) as resp:
        assert (resp.status, await resp.json()) == (200, {"queued": 3})

    openai, anthropic = at(process, "openai"), at(process, "anthropic")
    failed = await collect(adapter_for(openai.spec).stream_chat(http, openai, params("openai"), 10))
    answered = await collect(
        adapter_for(anthropic.spec).stream_chat(http, anthropic, params("anthropic"), 10)
    )
    probe = await adapter_for(openai.spec).probe_key(http, openai, 10)

    assert isinstance(failed.error, errors.ProviderKeyInvalid)
    assert answered.text == "Hello! How can I help you today?"
    assert probe.outcome.name == "UNREACHABLE"
    async with http.get(f"{control}/requests") as resp:
        recorded = await resp.json()
    assert [(r["method"], r["path"], r["scenario"]) for r in recorded] == [
        ("POST", "/v1/chat/completions", "openai:bad_key"),
        ("POST", "/v1/messages", "anthropic_basic"),
        ("GET", "/v1/models", ""),
    ]
    assert recorded[1]["headers"]["x-api-key"] == KEYS["anthropic"]
    assert recorded[1]["json"]["max_tokens"] == 4096
    assert all(r["finished"] and not r["disconnected"] for r in recorded)

    async with http.post(f"{control}/reset") as resp:
        assert resp.status == 200
    async with http.get(f"{control}/requests") as resp:
        assert await resp.json() == []
    async with http.put(f"{control}/record", json={"enabled": False}) as resp:
        assert await resp.json() == {"record": False}
    await collect(adapter_for(openai.spec).stream_chat(http, openai, params("openai"), 10))
    async with http.get(f"{control}/requests") as resp:
        assert await resp.json() == []
    async with http.post(f"{control}/scenarios", json={"no_such_field": 1}) as resp:
        assert resp.status == 400
    async with http.get(f"{control}/nothing") as resp:
        assert resp.status == 404


async def test_process_records_a_client_disconnect(
    process: procs.Service, http: aiohttp.ClientSession
) -> None:
    control = f"http://{process.address}/_fake"
    async with http.put(f"{control}/default", json={"pieces": ["a"] * 100, "delay": 0.02}) as resp:
        assert resp.status == 200
    ep = at(process, "google")
    stream = adapter_for(ep.spec).stream_chat(http, ep, params("google"), 30)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]

    for _ in range(200):  # the fake notices the disconnect asynchronously
        async with http.get(f"{control}/requests") as resp:
            recorded = await resp.json()
        if recorded[0]["finished"]:
            break
        await asyncio.sleep(0.01)
    assert recorded[0]["disconnected"] is True
    assert recorded[0]["outcome"] == "disconnected"


async def test_fast_mode_answers_every_format_and_records_nothing(http: aiohttp.ClientSession) -> None:
    with fake_process("--no-record") as service:
        for provider in ("openai", "anthropic", "google", "llama"):
            ep = at(service, provider)
            for _ in range(3):
                out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))
                assert out.text == "Hello from the fake provider."
                assert out.finished is not None and out.finished.model == ep.spec.default_model
        async with http.get(f"http://{service.address}/_fake/requests") as resp:
            assert await resp.json() == []


async def test_slow_mode_streams_the_given_number_of_pieces(http: aiohttp.ClientSession) -> None:
    with fake_process("--default", "slow", "--slow-delay", "0.001", "--slow-pieces", "7") as service:
        ep = at(service, "grok")
        out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("grok"), 10))
        assert out.deltas == [f" word{i}" for i in range(7)]


async def test_queue_routes_and_times(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Scenario.canned("openai", "rate_limited", route="get", times=2))
    base = fake.base_url("openai")
    headers = {"Authorization": f"Bearer {KEYS['openai']}"}
    async with http.post(
        f"{base}/chat/completions", json={"model": "m", "stream": True}, headers=headers
    ) as r:
        assert r.status == 200  # a chat request does not take a "get" scenario
    statuses = []
    for _ in range(3):
        async with http.get(f"{base}/models", headers=headers) as r:
            statuses.append(r.status)
    assert statuses == [429, 429, 200]
    assert fake.queue == []


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": []}, "choices"),
        ("/v1/messages", {"model": "claude-x", "max_tokens": 5, "messages": []}, "content"),
        ("/v1beta/models/gemini-2.5-pro:generateContent", {"contents": []}, "candidates"),
    ],
)
async def test_non_streamed_answers(
    fake: FakeProvider, http: aiohttp.ClientSession, path: str, body: dict[str, object], check: str
) -> None:
    async with http.post(fake.origin + path, json=body) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        answer = await resp.json()
    assert check in answer
    assert "Hello from the fake provider." in json.dumps(answer)


async def test_gemini_stream_without_alt_sse_is_a_json_array(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{fake.origin}/v1beta/models/gemini-2.5-flash:streamGenerateContent", json={}
    ) as resp:
        answer = await resp.json()
    assert isinstance(answer, list)
    assert answer[0]["candidates"][0]["finishReason"] == "STOP"


async def test_byte_by_byte_writes_arrive_in_pieces(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Scenario.transcript("gemini_basic", chunks=(1,), delay=0.0005))
    pieces = []
    async with http.post(f"{fake.origin}/v1beta/models/m:streamGenerateContent?alt=sse", json={}) as resp:
        async for piece in resp.content.iter_any():
            pieces.append(piece)
    body = b"".join(pieces)
    assert body.endswith(b"\r\n\r\n") and body.count(b"\r\n\r\n") == 3
    assert len(pieces) > 100  # really split: many reads, not one


def test_provider_identification_by_path_and_key() -> None:
    assert provider_of("/v1/models", {"authorization": f"Bearer {KEYS['grok']}"}) == "grok"
    assert provider_of("/v1/models", {"authorization": f"Bearer {KEYS['openai']}"}) == "openai"
    assert provider_of("/v1/models", {"x-api-key": KEYS["anthropic"]}) == "anthropic"
    assert provider_of("/v1/models", {}) == "llama"
    assert provider_of("/api/v1/models", {}) == "openrouter"
    assert provider_of("/v1beta/models", {}) == "google"
    assert provider_of("/catalog/models", {}) == "github"
    assert provider_of("/api/tags", {}) == "llama"
