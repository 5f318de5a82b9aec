"""The Gemini adapter: the request it sends (key only in a header) and each trap of the format."""

from __future__ import annotations

import json

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import KEYS, Collected, collect, endpoint, params

from llm_service.adapters import adapter_for
from llm_service.adapters.base import ChatParams, FinishReason, Message, Usage
from rmllm_common import errors

SSE = {"Content-Type": "text/event-stream"}


async def run(
    fake: FakeProvider,
    http: aiohttp.ClientSession,
    scenario: Scenario | None = None,
    chat: ChatParams | None = None,
) -> Collected:
    ep = endpoint(fake, "google")
    if scenario is not None:
        fake.enqueue(scenario)
    return await collect(adapter_for(ep.spec).stream_chat(http, ep, chat or params("google"), 10))


def chunks_body(*chunks: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


async def test_request_url_key_header_and_body(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    chat = params("google", temperature=0.3, top_p=0.7, max_tokens=128, stop=("STOP",))
    out = await run(fake, http, chat=chat)

    assert out.error is None
    record = fake.requests[-1]
    assert record.method == "POST"
    assert record.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert record.query == {"alt": "sse"}  # and nothing else: never the key
    assert record.headers["x-goog-api-key"] == KEYS["google"]
    assert "authorization" not in record.headers
    body = record.json
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Say hello."}]},
        {"role": "model", "parts": [{"text": "Hello."}]},
        {"role": "user", "parts": [{"text": "Again, in French."}]},
    ]
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.7,
        "maxOutputTokens": 128,
        "stopSequences": ["STOP"],
    }


async def test_key_never_in_the_url(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    await run(fake, http)
    ep = endpoint(fake, "google")
    await adapter_for(ep.spec).probe_key(http, ep, 5)
    await adapter_for(ep.spec).list_models(http, ep, 5)
    assert len(fake.requests) == 4  # chat, probe, two listing pages
    for record in fake.requests:
        assert KEYS["google"] not in record.path
        assert KEYS["google"] not in json.dumps(record.query)
        assert "key" not in record.query


async def test_minimal_request_and_model_prefix(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    chat = ChatParams(model="models/gemini-2.5-pro", messages=(Message("user", "Hi"),))
    await run(fake, http, chat=chat)
    record = fake.requests[-1]
    assert record.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert record.json == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


@pytest.mark.parametrize("chunks", [(), (1,), (2, 3)])
async def test_crlf_events_and_cumulative_usage(
    fake: FakeProvider, http: aiohttp.ClientSession, chunks: tuple[int, ...]
) -> None:
    out = await run(fake, http, Scenario.transcript("gemini_basic", chunks=chunks))
    assert out.text == "Bonjour ! Voilà la réponse : 東京は日本の首都です。🗼 Have a nice day."
    assert out.finished is not None
    # the last usageMetadata; thoughts count as output (and as reasoning)
    assert out.finished.usage == Usage(9, 49, 58, reasoning_tokens=32)


async def test_thought_parts_and_a_final_chunk_without_parts(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, Scenario.transcript("gemini_thinking_max_tokens"))
    assert "Considering" not in out.text
    assert out.text == "1. Apples\n2. Bananas\n3. Cherries"
    assert out.finished is not None and out.finished.finish_reason is FinishReason.LENGTH


async def test_prompt_blocked(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, Scenario.transcript("gemini_prompt_blocked"))
    assert out.deltas == []
    assert out.finished is not None and out.finished.finish_reason is FinishReason.CONTENT_FILTER


async def test_body_ending_before_any_finish_reason_is_truncated(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = chunks_body(
        {"candidates": [{"content": {"parts": [{"text": "Half an"}], "role": "model"}, "index": 0}]}
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.text == "Half an"
    assert isinstance(out.error, errors.UpstreamStreamTruncated)


async def test_finish_reason_then_a_cut_event_is_truncated(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = chunks_body({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]})
    out = await run(fake, http, Scenario(body=body + b'data: {"usageMeta', headers=SSE))
    assert isinstance(out.error, errors.UpstreamStreamTruncated)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("IMAGE_SAFETY", FinishReason.CONTENT_FILTER),
        ("IMAGE_PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("IMAGE_RECITATION", FinishReason.CONTENT_FILTER),
        ("LANGUAGE", FinishReason.OTHER),
        ("UNEXPECTED_TOOL_CALL", FinishReason.OTHER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.OTHER),
    ],
)
async def test_finish_reason_mapping(
    fake: FakeProvider, http: aiohttp.ClientSession, reason: str, finish: FinishReason
) -> None:
    body = chunks_body(
        {
            "candidates": [{"content": {"parts": [{"text": "t"}], "role": "model"}, "finishReason": reason}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1},
        }
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.finished is not None
    assert out.finished.finish_reason is finish
    assert out.finished.usage == Usage(4, 1, 5)  # no totalTokenCount: the sum


async def test_error_chunk_mid_stream(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, Scenario.stream(("one", "two"), fail_after=1))
    assert out.text == "one"
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert "overloaded" in out.error.message
