"""The Anthropic Messages adapter: the request it sends and each trap of the format."""

from __future__ import annotations

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
    ep = endpoint(fake, "anthropic")
    if scenario is not None:
        fake.enqueue(scenario)
    return await collect(adapter_for(ep.spec).stream_chat(http, ep, chat or params("anthropic"), 10))


async def test_request_path_headers_and_body(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    chat = params("anthropic", temperature=0.5, top_p=0.8, stop=("Human:",))
    out = await run(fake, http, chat=chat)

    assert out.error is None
    record = fake.requests[-1]
    assert (record.method, record.path, record.query) == ("POST", "/v1/messages", {})
    assert record.headers["x-api-key"] == KEYS["anthropic"]
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in record.headers
    body = record.json
    assert body["system"] == "You are terse."
    assert body["messages"] == [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again, in French."},
    ]
    assert body["max_tokens"] == 4096  # the registry's default_max_tokens: the API requires a value
    assert body["stream"] is True
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (0.5, 0.8, ["Human:"])


async def test_explicit_max_tokens_and_several_system_messages(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    chat = ChatParams(
        model="claude-haiku-4-5",
        messages=(Message("system", "Rule one."), Message("user", "Hi"), Message("system", "Rule two.")),
        max_tokens=77,
    )
    await run(fake, http, chat=chat)
    body = fake.requests[-1].json
    assert body["max_tokens"] == 77
    assert body["system"] == "Rule one.\n\nRule two."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert set(body) == {"model", "max_tokens", "messages", "stream", "system"}


async def test_no_system_message_sends_no_system_field(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    await run(fake, http, chat=ChatParams(model="claude-sonnet-4-5", messages=(Message("user", "Hi"),)))
    assert "system" not in fake.requests[-1].json


@pytest.mark.parametrize("chunks", [(), (1,), (13,)])
async def test_ping_events_anywhere_and_final_output_tokens_are_a_total(
    fake: FakeProvider, http: aiohttp.ClientSession, chunks: tuple[int, ...]
) -> None:
    out = await run(fake, http, Scenario.transcript("anthropic_basic", chunks=chunks))
    assert out.deltas == ["Hello", "! How can I", " help you today?"]
    assert out.finished is not None
    assert out.finished.usage == Usage(21, 12, 33)  # 12 is message_delta's total, not 2 + 12


async def test_thinking_deltas_are_not_answer_text(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, Scenario.transcript("anthropic_thinking", chunks=(1,)))
    assert out.text == "こんにちは！🌸 お元気ですか"  # noqa: RUF001
    assert out.finished is not None and out.finished.finish_reason is FinishReason.LENGTH


async def test_overloaded_error_event_after_text_went_out(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, Scenario.transcript("anthropic_overloaded"))
    assert out.text == "Let me think about that"
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert out.error.provider == "anthropic"
    assert "Overloaded" in out.error.message


async def test_missing_message_stop_is_truncated(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-x",'
        b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"partial"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":2}}\n\n'
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.text == "partial"
    assert isinstance(out.error, errors.UpstreamStreamTruncated)
    assert "message_stop" in out.error.message


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.OTHER),
    ],
)
async def test_stop_reason_mapping(
    fake: FakeProvider, http: aiohttp.ClientSession, stop_reason: str, finish: FinishReason
) -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_2","model":"claude-x",'
        b'"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"'
        + stop_reason.encode()
        + b'"},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.finished is not None
    assert out.finished.finish_reason is finish
    # cached input tokens are input tokens too
    assert out.finished.usage == Usage(105, 9, 114, cache_read_input_tokens=100)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [(b"null", FinishReason.UNSPECIFIED), (b'"a_reason_from_the_future"', FinishReason.OTHER)],
)
async def test_a_stop_reason_never_reported_is_unspecified_an_unknown_one_other(
    fake: FakeProvider, http: aiohttp.ClientSession, stop_reason: bytes, finish: FinishReason
) -> None:
    """llm.proto: FINISH_REASON_UNSPECIFIED is "not reported", OTHER "any other reason the
    provider gave"."""
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_3","model":"claude-x",'
        b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        + stop_reason
        + b'},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.finished is not None
    assert out.finished.finish_reason is finish


@pytest.mark.parametrize(
    "delta_usage",
    [
        b'{"output_tokens":120}',
        b'{"input_tokens":50,"output_tokens":120}',
        b'{"input_tokens":null,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,'
        b'"output_tokens":120}',
        b'{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":1000,'
        b'"output_tokens":120,"server_tool_use":{"web_search_requests":1}}',
    ],
    ids=["output-only", "input-without-cache", "nulls", "all"],
)
async def test_message_delta_usage_updates_only_the_counts_it_carries(
    fake: FakeProvider, http: aiohttp.ClientSession, delta_usage: bytes
) -> None:
    """MessageDeltaUsage: every count is optional (null or absent: unchanged), each one cumulative.

    The SDK's accumulator (``lib/streaming/_messages.py``) updates input, cache-write and
    cache-read each only when not None, so a delta without the cache counts keeps
    message_start's.
    """
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_3","model":"claude-x",'
        b'"usage":{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":1000,'
        b'"output_tokens":2}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":' + delta_usage + b"}\n\n"
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = await run(fake, http, Scenario(body=body, headers=SSE))
    assert out.finished is not None
    assert out.finished.usage == Usage(
        3050, 120, 3170, cache_read_input_tokens=1000, cache_creation_input_tokens=2000
    )
