"""The OpenAI chat-completions adapter (OpenAI, OpenRouter, GitHub Models, xAI, Ollama /v1).

The request each provider receives, and each trap of the format with its own test.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import KEYS, Collected, collect, endpoint, params

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Finished, FinishReason, Reasoning, ReasoningDelta, TextDelta, Usage
from rmllm_common import errors
from rmllm_common.registry import default_registry

# Every provider the registry serves with the OpenAI wire format.
OPENAI_FORMAT = sorted(p for p, spec in default_registry().providers.items() if spec.wire_format == "openai")
PATHS = {
    "openai": "/v1/chat/completions",
    "openrouter": "/api/v1/chat/completions",
    "github": "/inference/chat/completions",
    "grok": "/v1/chat/completions",
    "llama": "/v1/chat/completions",
}


SAMPLING_MODEL = {"grok": "grok-3"}


@pytest.mark.parametrize("provider", OPENAI_FORMAT)
async def test_request_path_auth_and_body(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    ep = endpoint(fake, provider)
    # xAI's reasoning models (the default grok-3-mini) refuse stop: a model that takes it
    model = SAMPLING_MODEL.get(provider, ep.spec.default_model)
    chat = params(provider, model=model, temperature=0.2, top_p=0.9, max_tokens=64, stop=("\n\n", "END"))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, chat, 10))

    assert out.error is None and out.finished is not None
    record = fake.requests[-1]
    assert (record.method, record.path, record.query) == ("POST", PATHS[provider], {})
    if KEYS[provider]:
        assert record.headers["authorization"] == f"Bearer {KEYS[provider]}"
    else:
        assert "authorization" not in record.headers  # Ollama: no key, no header
    assert record.headers["content-type"] == "application/json"
    assert record.headers["accept"] == "text/event-stream"
    body = record.json
    assert body["model"] == model
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again, in French."},
    ]
    assert body[ep.spec.max_tokens_field] == 64
    assert (body["temperature"], body["top_p"], body["stop"]) == (0.2, 0.9, ["\n\n", "END"])


async def test_openai_sends_max_tokens_in_its_registry_field(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    ep = endpoint(fake, "openai")
    await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai", max_tokens=5), 10))
    body = fake.requests[-1].json
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body


async def test_unset_sampling_fields_are_not_sent(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    ep = endpoint(fake, "grok")
    await collect(adapter_for(ep.spec).stream_chat(http, ep, params("grok"), 10))
    assert set(fake.requests[-1].json) == {"model", "messages", "stream", "stream_options"}


async def run(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str, scenario: Scenario
) -> Collected:
    ep = endpoint(fake, provider)
    fake.enqueue(scenario)
    return await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))


@pytest.mark.parametrize("chunks", [(), (1,), (5, 11, 3)])
async def test_done_inside_content_is_text_not_the_end(
    fake: FakeProvider, http: aiohttp.ClientSession, chunks: tuple[int, ...]
) -> None:
    out = await run(fake, http, "openai", Scenario.transcript("openai_done_in_content", chunks=chunks))
    assert out.text.count("data: [DONE]") == 2
    assert out.text.endswith("That ends it.")
    assert out.finished is not None and out.finished.finish_reason is FinishReason.STOP


async def test_openrouter_processing_comments_are_ignored_before_and_mid_stream(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "openrouter", Scenario.transcript("openrouter_basic", chunks=(2,)))
    assert "OPENROUTER" not in out.text
    assert out.deltas == ["Two", " plus", " two", " equals", " four", "."]


async def test_openrouter_usage_after_the_finish_chunk_keeps_stop(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "openrouter", Scenario.transcript("openrouter_basic"))
    assert out.finished is not None
    assert out.finished.finish_reason is FinishReason.STOP  # the later finish_reason: null did not erase it
    assert out.finished.usage == Usage(14, 6, 20)


async def test_github_first_event_with_empty_choices(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, "github", Scenario.transcript("github_basic", chunks=(1,)))
    assert out.text == "Octocat says hi!"
    assert out.finished is not None
    assert out.finished.model == "gpt-4o-mini-2024-07-18"  # not the first event's empty model
    assert out.finished.response_id == "chatcmpl-BUqF7tRy2uIo9pAs3dFg6hJk1lZx"


async def test_reasoning_deltas_are_not_answer_text_and_count_as_output(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "grok", Scenario.transcript("grok_reasoning"))
    assert out.text == "Hi there!"
    assert out.finished is not None
    # 3 completion + 102 reasoning tokens (xAI leaves reasoning out of completion_tokens); 5 cached
    assert out.finished.usage == Usage(15, 105, 120, cache_read_input_tokens=5, reasoning_tokens=102)
    assert out.finished.reasoning == ""  # not asked for


async def test_reasoning_text_is_delivered_when_asked_for(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario.transcript("grok_reasoning"))
    ep = endpoint(fake, "grok")
    events = [
        e
        async for e in adapter_for(ep.spec).stream_chat(
            http, ep, params("grok", reasoning=Reasoning(include=True)), 10
        )
    ]
    reasoning = [e.text for e in events if isinstance(e, ReasoningDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert reasoning and "".join(reasoning) == finished.reasoning
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hi there!"


async def test_error_object_mid_stream_ends_with_the_mapped_error_after_text(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "openrouter", Scenario.transcript("openrouter_midstream_error"))
    assert out.text == "Once upon a time"
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert "Provider returned error" in out.error.message
    assert out.error.metadata == {"provider": "openrouter"}


async def test_synthetic_error_event_mid_stream(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, "openai", Scenario.stream(("a", "b", "c"), fail_after=2))
    assert out.text == "ab"
    assert isinstance(out.error, errors.ProviderUnavailable)


async def test_no_usage_chunk_means_usage_not_reported_never_an_estimate(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "llama", Scenario.transcript("ollama_no_usage"))
    assert out.finished is not None
    assert out.finished.usage == Usage(0, 0, 0, reported=False)


async def test_multibyte_text_split_inside_characters(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "openai", Scenario.transcript("openai_multibyte_length", chunks=(1, 2, 3)))
    assert out.text == "Hello 👋 — 你好，世界！ Café 🇫🇷 naïve 日本語🙂"  # noqa: RUF001
    assert out.finished is not None and out.finished.finish_reason is FinishReason.LENGTH


async def test_stream_without_done_is_truncated(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    body = (
        b'data: {"id":"x","model":"m","choices":[{"index":0,"delta":{"content":"hi"},'
        b'"finish_reason":"stop"}]}'
        b"\n\n"
    )
    out = await run(fake, http, "openai", Scenario(body=body, headers={"Content-Type": "text/event-stream"}))
    assert out.text == "hi"
    assert isinstance(out.error, errors.UpstreamStreamTruncated)
    assert "[DONE]" in out.error.message


async def test_malformed_event_is_a_provider_error(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    body = b"data: {not json\n\ndata: [DONE]\n\n"
    out = await run(fake, http, "openai", Scenario(body=body, headers={"Content-Type": "text/event-stream"}))
    assert isinstance(out.error, errors.ProviderError)
    assert out.error.reason == "PROVIDER_ERROR"


async def test_json_error_answer_with_status_200_is_mapped(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    payload = {"error": {"message": "model is loading", "type": "server_error", "code": None}}
    out = await run(fake, http, "llama", Scenario.json(payload))
    assert isinstance(out.error, errors.ProviderUnavailable)
    assert "model is loading" in out.error.message


async def test_only_the_first_choice_is_the_answer(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    chunk = (
        b'data: {"id":"c","model":"m","choices":[{"index":1,"delta":{"content":"other"}},'
        b'{"index":0,"delta":{"content":"first"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    out = await run(fake, http, "openai", Scenario(body=chunk, headers={"Content-Type": "text/event-stream"}))
    assert out.text == "first"
    assert out.finished is not None and out.finished.finish_reason is FinishReason.STOP


# OpenAI answers a forced named tool choice with ``finish_reason: "stop"`` (streamed
# or not), and Ollama's /v1 did the same after any tool call before ollama/ollama#7963.
FORCED_CALL = b"".join(
    b"data: " + chunk + b"\n\n"
    for chunk in (
        b'{"id":"chatcmpl-F1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,'
        b'"id":"call_F1","type":"function","function":{"name":"get_weather","arguments":""}}],'
        b'"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}',
        b'{"id":"chatcmpl-F1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
        b'"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":'
        b'\\"Paris\\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}',
        b'{"id":"chatcmpl-F1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
        b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}',
        b'{"id":"chatcmpl-F1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
        b'"choices":[],"usage":{"prompt_tokens":60,"completion_tokens":9,"total_tokens":69}}',
        b"[DONE]",
    )
)


@pytest.mark.parametrize("provider", OPENAI_FORMAT)
async def test_tool_calls_with_finish_reason_stop_finish_as_tool_calls(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    """FINISH_REASON_TOOL_CALLS means the model asked to call a tool (llm.proto), as the
    Gemini and Ollama adapters already say when their provider reports STOP after calls."""
    scenario = Scenario(body=FORCED_CALL, headers={"Content-Type": "text/event-stream"})
    out = await run(fake, http, provider, scenario)
    assert out.error is None and out.finished is not None
    assert [(c.id, c.name, c.arguments) for c in out.finished.tool_calls] == [
        ("call_F1", "get_weather", '{"city":"Paris"}')
    ]
    assert out.finished.finish_reason is FinishReason.TOOL_CALLS


def _answer_finishing(reason: bytes) -> bytes:
    """A streamed text answer whose last choice chunk carries ``finish_reason: <reason>``."""
    return b"".join(
        b"data: " + chunk + b"\n\n"
        for chunk in (
            b'{"id":"chatcmpl-U1","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}',
            b'{"id":"chatcmpl-U1","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{},"finish_reason":' + reason + b"}]}",
            b"[DONE]",
        )
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (b"null", FinishReason.UNSPECIFIED),
        (b'"eos_token"', FinishReason.OTHER),
        (b'"stop"', FinishReason.STOP),
    ],
)
async def test_a_finish_reason_never_reported_is_unspecified_an_unknown_one_other(
    fake: FakeProvider, http: aiohttp.ClientSession, reason: bytes, expected: FinishReason
) -> None:
    """llm.proto: FINISH_REASON_UNSPECIFIED is "not reported", OTHER "any other reason the
    provider gave"; a complete stream (``[DONE]``) that never named one is the first."""
    scenario = Scenario(body=_answer_finishing(reason), headers={"Content-Type": "text/event-stream"})
    out = await run(fake, http, "openai", scenario)
    assert out.error is None and out.finished is not None
    assert out.finished.finish_reason is expected


async def test_an_event_of_unexpected_shape_is_logged_as_an_adapter_bug(
    fake: FakeProvider, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'data: {"choices": "SHAPE-MARKER"}\n\ndata: [DONE]\n\n'
    with caplog.at_level(logging.ERROR, logger="llm_service.adapters.errors"):
        out = await run(
            fake, http, "openai", Scenario(body=body, headers={"Content-Type": "text/event-stream"})
        )
    assert isinstance(out.error, errors.ProviderError)
    assert out.error.reason == "PROVIDER_ERROR"
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "adapter_unexpected_shape"]
    assert record.levelno == logging.ERROR
    assert (record.provider, record.exception) == ("openai", "AttributeError")  # type: ignore[attr-defined]
    logged = record.getMessage()
    assert "openai.py" in logged and "stream_chat" in logged  # the traceback names the adapter code
    assert "SHAPE-MARKER" not in logged and KEYS["openai"] not in logged


# A non-streamed chat.completion (the OpenAI API reference's shape), as an
# OpenAI-compatible server that ignores ``stream: true`` answers: content null
# beside tool calls without ``index``, a second choice, usage with details.
WHOLE_ANSWER = {
    "id": "chatcmpl-CJ5aK2pQ9rT4vW7xY1zB3nM6",
    "object": "chat.completion",
    "created": 1764591000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_Hq2Lm8Xv4Rt7Np1Ws9Kd3Yb",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_Zc5Vb1Nm7Qw3Er9Ty2Ui6Op",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "not the answer", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_560af6e559",
}


@pytest.mark.parametrize("provider", ["openai", "github", "llama"])
async def test_a_whole_json_answer_instead_of_a_stream_is_the_same_answer(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    out = await run(fake, http, provider, Scenario.json(WHOLE_ANSWER))
    assert out.error is None, out.error
    assert out.finished is not None
    assert out.text == ""
    assert out.finished.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.id, c.name, c.arguments) for c in out.finished.tool_calls] == [
        ("call_Hq2Lm8Xv4Rt7Np1Ws9Kd3Yb", "get_weather", '{"city": "Paris"}'),
        ("call_Zc5Vb1Nm7Qw3Er9Ty2Ui6Op", "get_weather", '{"city": "Tokyo"}'),
    ]
    assert out.assembled() == [(c.id, c.name, c.arguments) for c in out.finished.tool_calls]
    assert out.finished.usage == Usage(1117, 46, 1163, cache_read_input_tokens=1024)
    assert (out.finished.model, out.finished.response_id) == (WHOLE_ANSWER["model"], WHOLE_ANSWER["id"])


async def test_a_whole_json_answer_with_text_refusal_and_reasoning(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    answer = {
        "id": "b1c2d3e4-5f60-4a7b-8c9d-0e1f2a3b4c5d",
        "object": "chat.completion",
        "created": 1764591100,
        "model": "grok-3-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Bonjour !", "reasoning_content": "French."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 60},
    }
    ep = endpoint(fake, "grok")
    fake.enqueue(Scenario.json(answer))
    chat = params("grok", reasoning=Reasoning(include=True))
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, chat, 10))
    assert out.error is None and out.finished is not None
    assert (out.text, out.finished.reasoning) == ("Bonjour !", "French.")
    assert out.finished.usage == Usage(15, 45, 60)

    refused = {
        "id": "chatcmpl-r",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                "finish_reason": "stop",
            }
        ],
    }
    out = await run(fake, http, "openai", Scenario.json(refused))
    assert out.text == "I can't help with that."
    assert out.finished is not None and out.finished.finish_reason is FinishReason.CONTENT_FILTER
    assert out.finished.usage == Usage(reported=False)


async def test_a_json_body_that_is_no_answer_is_still_a_provider_error(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, "openai", Scenario.json({"object": "list", "data": []}))
    assert isinstance(out.error, errors.ProviderError)
    assert out.error.reason == "PROVIDER_ERROR"
