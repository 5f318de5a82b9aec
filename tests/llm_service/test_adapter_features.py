"""Feature corners of each wire format, beyond the recorded transcripts.

Anthropic's forced JSON tool (for a model whose registry entry says
``json_schema_mode = "tool"`` and for a bare JSON object) streams back as text
with finish STOP; OpenAI-compatible providers that number every call 0 still
get one call per id; Gemini ids it sends itself are kept and sent back; the
registry's capability data is served by ListProviders and validated at load; and
ChatRequest and StreamChatRequest keep identical fields.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import collect, endpoint
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import LLMHarness, auth

from llm_service.adapters import adapter_for
from llm_service.adapters.base import (
    ChatParams,
    Endpoint,
    FinishReason,
    Message,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from rmllm_common.registry import default_registry, load_registry
from rmllm_common.secret import Secret

SSE = {"Content-Type": "text/event-stream"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _anthropic_tool_answer(name: str) -> bytes:
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "claude-x",
                    "usage": {"input_tokens": 9, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"a": '},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "7}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


@pytest.mark.parametrize(
    ("fmt", "tool_name"),
    [
        (ResponseFormat("json_schema", "answer", SCHEMA), "answer"),
        (ResponseFormat("json_object"), "json_answer"),
    ],
)
async def test_anthropic_forced_json_tool_streams_back_as_text(
    fake: FakeProvider, http: aiohttp.ClientSession, fmt: ResponseFormat, tool_name: str
) -> None:
    ep = endpoint(fake, "anthropic")
    spec = ep.spec
    old = spec.models[0]
    legacy = dataclasses.replace(old, id="claude-legacy", json_schema_mode="tool")
    ep = dataclasses.replace(ep, spec=dataclasses.replace(spec, models=(*spec.models, legacy), _by_model={}))
    model = "claude-legacy" if fmt.type == "json_schema" else old.id
    params = ChatParams(model=model, messages=(Message("user", "give JSON"),), response_format=fmt)
    fake.enqueue(Scenario(body=_anthropic_tool_answer(tool_name), headers=SSE, chunks=(3,)))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params, 10))

    assert out.error is None, out.error
    assert out.text == '{"a": 7}'
    assert out.finished is not None and out.finished.tool_calls == ()
    assert out.finished.finish_reason is FinishReason.STOP
    body = fake.requests[-1].json
    assert body["tool_choice"] == {"type": "tool", "name": tool_name}
    assert body["tools"][0]["name"] == tool_name
    assert "output_config" not in body


async def test_openai_calls_all_numbered_zero_are_told_apart_by_id(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """Some OpenAI-compatible servers send every call whole at index 0."""
    chunks = [
        {
            "id": "c",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x": 1}'},
                            }
                        ]
                    },
                }
            ],
        },
        {
            "id": "c",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_b",
                                "type": "function",
                                "function": {"name": "g", "arguments": "{}"},
                            }
                        ]
                    },
                }
            ],
        },
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    ep = endpoint(fake, "llama")
    fake.enqueue(Scenario(body=body, headers=SSE))
    out = await collect(
        adapter_for(ep.spec).stream_chat(http, ep, ChatParams("llama3.2", (Message("user", "x"),)), 10)
    )
    assert out.finished is not None
    assert out.finished.tool_calls == (ToolCall("call_a", "f", '{"x": 1}'), ToolCall("call_b", "g", "{}"))
    assert [d.index for d in out.tool_deltas] == [0, 1]
    assert not out.finished.usage.reported


async def test_gemini_ids_of_its_own_are_kept_and_sent_back(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    chunk = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": {"id": "fc-9", "name": "f", "args": {"a": 1}}}],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        "responseId": "r1",
    }
    ep = endpoint(fake, "google")
    fake.enqueue(Scenario(body=b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n", headers=SSE))
    first = ChatParams("gemini-2.5-flash", (Message("user", "x"),))
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, first, 10))
    assert out.finished is not None
    assert out.finished.tool_calls == (ToolCall("fc-9", "f", '{"a":1}'),)
    assert out.finished.finish_reason is FinishReason.TOOL_CALLS

    answer = Message(
        "assistant", "", tool_calls=out.finished.tool_calls, provider_state=out.finished.provider_state
    )
    second = ChatParams(
        "gemini-2.5-flash", (*first.messages, answer, Message("tool", "ok", tool_call_id="fc-9"))
    )
    fake.enqueue(Scenario.transcript("gemini_basic"))
    await collect(adapter_for(ep.spec).stream_chat(http, ep, second, 10))
    contents = fake.requests[-1].json["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "f", "args": {"a": 1}, "id": "fc-9"}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "f", "response": {"result": "ok"}, "id": "fc-9"}}],
    }


def test_chat_and_stream_requests_keep_identical_fields() -> None:
    def fields(message: type) -> list[tuple[str, int, int, str]]:
        return [
            (f.name, f.number, f.type, f.message_type.full_name if f.message_type else "")
            for f in message.DESCRIPTOR.fields  # type: ignore[attr-defined]
        ]

    assert fields(llm_pb2.ChatRequest) == fields(llm_pb2.StreamChatRequest)
    done = {f.name for f in llm_pb2.StreamChatDone.DESCRIPTOR.fields}
    response = {f.name for f in llm_pb2.ChatResponse.DESCRIPTOR.fields}
    assert done == response - {"content"}


async def test_list_providers_serves_capabilities_and_cache_prices(llm: LLMHarness) -> None:
    reply = await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth())
    anthropic = next(p for p in reply.providers if p.id == "anthropic")
    sonnet = next(m for m in anthropic.models if m.id == "claude-sonnet-4-5")
    assert list(sonnet.capabilities) == [
        "json_schema",
        "parallel_tools",
        "pdf",
        "reasoning",
        "tools",
        "vision",
    ]
    assert (sonnet.cache_read_price_per_mtok, sonnet.cache_write_price_per_mtok) == (0.30, 3.75)
    github = next(p for p in reply.providers if p.id == "github")
    llama = next(m for m in github.models if m.id == "meta/llama-3.3-70b-instruct")
    assert list(llama.capabilities) == []


def test_every_listed_model_declares_its_capabilities() -> None:
    for spec in default_registry().providers.values():
        for model in spec.models:
            assert model.capabilities is not None, f"{spec.id} {model.id}"


def test_cost_prices_cache_reads_and_writes() -> None:
    spec = default_registry().providers["anthropic"]
    # 50 uncached at 3.00, 2,000 written at 3.75, 1,000 read at 0.30, 120 out at 15.00
    assert spec.cost("claude-sonnet-4-5", 3050, 120, 1000, 2000) == pytest.approx(0.00975, abs=1e-15)
    gemini = default_registry().providers["google"]
    assert gemini.cost("gemini-2.5-flash", 1500, 240, 1024) == pytest.approx(0.00077352, abs=1e-15)


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ('capabilities = ["tools", "telepathy"]', "unknown capabilities"),
        ('reasoning_efforts = ["extreme"]', "reasoning_efforts"),
        ('json_schema_mode = "magic"', "json_schema_mode"),
        ('unsupported_params = ["seed"]', "unsupported_params"),
    ],
)
def test_bad_capability_data_is_refused_at_load(tmp_path: Path, row: str, says: str) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[providers.x]
display_name = "X"
wire_format = "openai"
base_url = "https://x.example/v1"
auth = "bearer"
default_model = "m"
probe = {{ method = "GET", path = "/models" }}
models = [ {{ id = "m", {row} }} ]
"""
    )
    with pytest.raises(ValueError, match=says):
        load_registry(path)


async def test_openai_refusal_is_text_with_content_filter(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    chunks = [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"refusal": "I can't help "}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"refusal": "with that."}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    ep = endpoint(fake, "openai")
    fake.enqueue(Scenario(body=body, headers=SSE))
    params = ChatParams(
        "gpt-4o-mini", (Message("user", "x"),), response_format=ResponseFormat("json_schema", "a", SCHEMA)
    )
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params, 10))
    assert out.text == "I can't help with that."
    assert out.finished is not None and out.finished.finish_reason is FinishReason.CONTENT_FILTER


async def test_openai_call_without_an_id_gets_a_stable_one(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    chunks = [
        {
            "id": "cmpl-7",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ]
                    },
                }
            ],
        },
        {"id": "cmpl-7", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    ep = endpoint(fake, "llama")
    ids = []
    for _ in range(2):
        fake.enqueue(Scenario(body=body, headers=SSE))
        out = await collect(
            adapter_for(ep.spec).stream_chat(http, ep, ChatParams("llama3.2", (Message("user", "x"),)), 10)
        )
        assert out.finished is not None
        ids.append(out.finished.tool_calls[0].id)
    assert ids[0] == ids[1] and ids[0].startswith("call_")
    assert out.tool_deltas[0].id == ids[0]


def _body(provider: str, params: ChatParams) -> dict[str, Any]:
    from llm_service.adapters import anthropic, gemini, openai

    spec = default_registry().providers[provider]
    build = {"openai": openai.build_body, "anthropic": anthropic.build_body, "gemini": gemini.build_body}
    return build[spec.wire_format](Endpoint(spec, spec.base_url, Secret("k")), params)


@pytest.mark.parametrize("provider", ["openai", "openrouter", "github", "grok"])
@pytest.mark.parametrize("mode", ["auto", "none"])
def test_openai_format_sends_no_tool_choice_without_tools(provider: str, mode: ToolChoiceMode) -> None:
    """OpenAI answers 400 "Invalid value for 'tool_choice': 'tool_choice' is only allowed
    when 'tools' are specified"; without tools, AUTO and NONE both mean no call."""
    params = ChatParams("m", (Message("user", "hi"),), tool_choice=ToolChoice(mode=mode))
    assert "tool_choice" not in _body(provider, params)
    with_tools = dataclasses.replace(params, tools=(ToolSpec("f"),))
    assert _body(provider, with_tools)["tool_choice"] == mode


def test_anthropic_none_choice_carries_no_parallel_switch() -> None:
    """``ToolChoiceNone`` has only ``type`` (anthropic-sdk-python ``tool_choice_none_param.py``);
    with no call allowed there is nothing parallel to turn off."""
    params = ChatParams(
        "claude-sonnet-4-5",
        (Message("user", "hi"),),
        max_tokens=64,
        tools=(ToolSpec("f"),),
        tool_choice=ToolChoice(mode="none"),
        parallel_tool_calls=False,
    )
    assert _body("anthropic", params)["tool_choice"] == {"type": "none"}
    auto = dataclasses.replace(params, tool_choice=ToolChoice(mode="auto"))
    assert _body("anthropic", auto)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
