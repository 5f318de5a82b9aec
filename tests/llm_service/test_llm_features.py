"""Tools, parts, structured output and reasoning through the real server.

StreamChat forwards reasoning and tool-call deltas in the order the adapter
yields them and ends with ``done`` carrying every call assembled; Chat carries
the same result; usage says whether the provider reported it and prices cache
reads and writes at the registry's prices. Every bad-input row is one
INVALID_ARGUMENT with its BadRequest field; every capability refusal is
FAILED_PRECONDITION / CAPABILITY_UNSUPPORTED naming the field and the model, and
never reaches the vault's key or the provider; a model missing from the registry
passes through.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import LLMHarness, auth, chat_request, rich_error, stream_request
from testkit.llm_scripted import finished

from llm_service.adapters.base import (
    NOT_REPORTED,
    ChatEvent,
    Finished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llm_service.features import FeatureLimits

USER, ASSISTANT, TOOL = llm_pb2.ROLE_USER, llm_pb2.ROLE_ASSISTANT, llm_pb2.ROLE_TOOL
STATE = b'{"v":1,"format":"openai"}'
CALLS = (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_time", "{}"))
SCRIPT: list[ChatEvent] = [
    ReasoningDelta("Two "),
    ReasoningDelta("tools."),
    TextDelta("Checking."),
    ToolCallDelta(0, "call_a", "get_weather", ""),
    ToolCallDelta(0, arguments='{"city"'),
    ToolCallDelta(1, "call_b", "get_time", "{}"),
    ToolCallDelta(0, arguments=': "Paris"}'),
    Finished(
        FinishReason.TOOL_CALLS,
        Usage(1200, 80, 1280, cache_read_input_tokens=1024, reasoning_tokens=64),
        "gpt-4o-mini",
        "resp-9",
        CALLS,
        "Two tools.",
        STATE,
    ),
]


def schema(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


WEATHER = llm_pb2.Tool(name="get_weather", description="weather", parameters=schema(type="object"))


async def test_stream_forwards_reasoning_and_tool_deltas_in_order_and_chat_collects_them(
    llm: LLMHarness,
) -> None:
    llm.adapter.scripts = [SCRIPT]
    stream = [m async for m in llm.stub.StreamChat(stream_request(tools=[WEATHER]), metadata=auth())]
    kinds = [m.WhichOneof("event") for m in stream]
    assert kinds == ["reasoning_delta"] * 2 + ["delta"] + ["tool_call_delta"] * 4 + ["done"]
    deltas = [m.tool_call_delta for m in stream if m.WhichOneof("event") == "tool_call_delta"]
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, "call_a", "get_weather"),
        (0, "", ""),
        (1, "call_b", "get_time"),
        (0, "", ""),
    ]
    done = stream[-1].done
    for index, call in enumerate(done.tool_calls):  # exactly the concatenation of its fragments
        assert call.arguments == "".join(d.arguments_delta for d in deltas if d.index == index)
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [
        (c.id, c.name, c.arguments) for c in CALLS
    ]
    assert done.reasoning == "".join(m.reasoning_delta for m in stream[:2])
    assert done.provider_state == STATE
    assert done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS

    reply = await llm.stub.Chat(chat_request(tools=[WEATHER]), metadata=auth())
    assert reply.content == "Checking."
    assert list(reply.tool_calls) == list(done.tool_calls)
    assert (reply.reasoning, reply.provider_state) == (done.reasoning, done.provider_state)
    assert reply.usage == done.usage


async def test_usage_carries_cache_and_reasoning_tokens_priced_at_cache_prices(llm: LLMHarness) -> None:
    llm.adapter.scripts = [SCRIPT]
    reply = await llm.stub.Chat(chat_request(tools=[WEATHER]), metadata=auth())
    usage = reply.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (1200, 80, 1280)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.reasoning_tokens) == (
        1024,
        0,
        64,
    )
    assert usage.usage_reported
    # gpt-4o-mini: 0.15 input, 0.075 cached input, 0.60 output per 1M tokens
    assert usage.cost_usd == pytest.approx((176 * 0.15 + 1024 * 0.075 + 80 * 0.60) / 1e6, abs=1e-10)
    assert round(usage.cost_usd, 2) == round((176 * 0.15 + 1024 * 0.075 + 80 * 0.60) / 1e6, 2)


async def test_usage_not_reported_is_said_not_zeros_presented_as_measured(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[TextDelta("hi"), Finished(FinishReason.STOP, NOT_REPORTED, "gpt-4o-mini")]]
    reply = await llm.stub.Chat(chat_request(), metadata=auth())
    assert not reply.usage.usage_reported
    assert reply.usage.cost_usd == 0
    llm.adapter.scripts = [[TextDelta("hi"), finished()]]
    assert (await llm.stub.Chat(chat_request(), metadata=auth())).usage.usage_reported


def _msg(role: int = USER, content: str = "hi", **fields: Any) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=role, content=content, **fields)  # type: ignore[arg-type]


def _image(data: bytes = b"\x89PNG", mime: str = "image/png", url: str = "") -> llm_pb2.ContentPart:
    image = (
        llm_pb2.ImagePart(url=url, mime_type=mime) if url else llm_pb2.ImagePart(data=data, mime_type=mime)
    )
    return llm_pb2.ContentPart(image=image)


CALL = llm_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
MAX_IMAGE = FeatureLimits().max_image_bytes
BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "schema not an object",
        {"tools": [llm_pb2.Tool(name="f", parameters=schema(type="string"))]},
        ["tools[0].parameters"],
    ),
    ("tool name with a space", {"tools": [llm_pb2.Tool(name="get weather")]}, ["tools[0].name"]),
    ("tool name too long", {"tools": [llm_pb2.Tool(name="f" * 65)]}, ["tools[0].name"]),
    ("empty tool name", {"tools": [llm_pb2.Tool(name="")]}, ["tools[0].name"]),
    ("duplicate tool names", {"tools": [WEATHER, WEATHER]}, ["tools[1].name"]),
    (
        "tool_choice names an unknown tool",
        {"tools": [WEATHER], "tool_choice": llm_pb2.ToolChoice(name="nope")},
        ["tool_choice.name"],
    ),
    (
        "tool_choice required without tools",
        {"tool_choice": llm_pb2.ToolChoice(mode=llm_pb2.TOOL_CHOICE_MODE_REQUIRED)},
        ["tool_choice.mode"],
    ),
    (
        "tool result answering no earlier call",
        {
            "messages": [
                _msg(),
                _msg(ASSISTANT, "", tool_calls=[CALL]),
                _msg(TOOL, "12C", tool_call_id="call_x"),
            ]
        },
        ["messages[2].tool_call_id"],
    ),
    (
        "tool result before its call",
        {"messages": [_msg(TOOL, "12C", tool_call_id="call_1"), _msg(ASSISTANT, "", tool_calls=[CALL])]},
        ["messages[0].tool_call_id"],
    ),
    ("tool message without id", {"messages": [_msg(TOOL, "12C")]}, ["messages[0].tool_call_id"]),
    ("tool calls on a user message", {"messages": [_msg(tool_calls=[CALL])]}, ["messages[0].tool_calls"]),
    (
        "one id twice in one answer",
        {"messages": [_msg(), _msg(ASSISTANT, "", tool_calls=[CALL, CALL])]},
        ["messages[1].tool_calls[1].id"],
    ),
    (
        "tool call arguments not a JSON object",
        {
            "messages": [
                _msg(),
                _msg(ASSISTANT, "", tool_calls=[llm_pb2.ToolCall(id="c", name="f", arguments="[1")]),
            ]
        },
        ["messages[1].tool_calls[0].arguments"],
    ),
    (
        "image over the size limit",
        {"messages": [_msg(parts=[_image(b"x" * (MAX_IMAGE + 1))])]},
        ["messages[0].parts[0].image.data"],
    ),
    (
        "image of an unsupported type",
        {"messages": [_msg(parts=[_image(mime="image/bmp")])]},
        ["messages[0].parts[0].image.mime_type"],
    ),
    (
        "image without a type",
        {"messages": [_msg(parts=[_image(mime="")])]},
        ["messages[0].parts[0].image.mime_type"],
    ),
    (
        "data URL not base64",
        {"messages": [_msg(parts=[_image(url="data:image/png;base64,@@@")])]},
        ["messages[0].parts[0].image.url"],
    ),
    (
        "ftp image URL",
        {"messages": [_msg(parts=[_image(url="ftp://example.com/a.png")])]},
        ["messages[0].parts[0].image.url"],
    ),
    (
        "document not a PDF",
        {
            "messages": [
                _msg(
                    parts=[
                        llm_pb2.ContentPart(document=llm_pb2.DocumentPart(data=b"x", mime_type="text/plain"))
                    ]
                )
            ]
        },
        ["messages[0].parts[0].document.mime_type"],
    ),
    (
        "image in an assistant message",
        {"messages": [_msg(), _msg(ASSISTANT, "", parts=[_image()])]},
        ["messages[1].parts[0].image"],
    ),
    (
        "garbage provider_state",
        {"messages": [_msg(), _msg(ASSISTANT, "ok", provider_state=b"\x01x")]},
        ["messages[1].provider_state"],
    ),
    (
        "json schema without a schema",
        {"response_format": llm_pb2.ResponseFormat(type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)},
        ["response_format.schema"],
    ),
    (
        "response schema not an object",
        {
            "response_format": llm_pb2.ResponseFormat(
                type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="r", schema=schema(type="array")
            )
        },
        ["response_format.schema"],
    ),
    (
        "negative thinking budget",
        {"reasoning": llm_pb2.ReasoningOptions(budget_tokens=-1)},
        ["reasoning.budget_tokens"],
    ),
]


@pytest.mark.parametrize(("fields", "paths"), [(f, p) for _, f, p in BAD], ids=[n for n, _, _ in BAD])
@pytest.mark.parametrize("kind", [llm_pb2.ChatRequest, llm_pb2.StreamChatRequest])
async def test_bad_feature_input(
    llm: LLMHarness, kind: type[Any], fields: dict[str, Any], paths: list[str]
) -> None:
    request = kind(provider="openai", **{"messages": [_msg()], **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind is llm_pb2.ChatRequest:
            await llm.stub.Chat(request, metadata=auth())
        else:
            [m async for m in llm.stub.StreamChat(request, metadata=auth())]
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert [field for field, _ in error.violations] == paths
    assert llm.vault.calls == []
    assert llm.adapter.calls == []


THINK = llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_LOW)
REFUSALS: list[tuple[str, str, dict[str, Any], str]] = [
    ("google", "gemini-2.5-flash", {"tools": [WEATHER], "parallel_tool_calls": False}, "parallel_tool_calls"),
    (
        "google",
        "gemini-2.5-flash",
        {"messages": [_msg(parts=[_image(url="https://example.com/a.png")])]},
        "messages[0].parts[0].image.url",
    ),
    ("github", "meta/llama-3.3-70b-instruct", {"tools": [WEATHER]}, "tools"),
    ("openai", "o4-mini", {"tools": [WEATHER], "parallel_tool_calls": True}, "parallel_tool_calls"),
    ("llama", "llama3.2", {"messages": [_msg(parts=[_image()])]}, "messages[0].parts[0].image"),
    (
        "grok",
        "grok-3-mini",
        {
            "messages": [
                _msg(
                    parts=[
                        llm_pb2.ContentPart(
                            document=llm_pb2.DocumentPart(data=b"%PDF", mime_type="application/pdf")
                        )
                    ]
                )
            ]
        },
        "messages[0].parts[0].document",
    ),
    (
        "github",
        "mistral-ai/mistral-small-2503",
        {
            "response_format": llm_pb2.ResponseFormat(
                type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=schema(type="object")
            )
        },
        "response_format",
    ),
    (
        "openai",
        "gpt-4o",
        {"reasoning": llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_HIGH)},
        "reasoning",
    ),
    (
        "grok",
        "grok-3-mini",
        {"reasoning": llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_MEDIUM)},
        "reasoning.effort",
    ),
    (
        "grok",
        "grok-4",
        {"reasoning": llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_LOW)},
        "reasoning.effort",
    ),
    (
        "openai",
        "o4-mini",
        {"reasoning": llm_pb2.ReasoningOptions(budget_tokens=2048)},
        "reasoning.budget_tokens",
    ),
    (
        "llama",
        "llava-unlisted",
        {"messages": [_msg(parts=[_image(url="https://example.com/a.png")])]},
        "messages[0].parts[0].image.url",
    ),
    # OpenAI: "Unsupported parameter: 'stop' is not supported with this model" (o4-mini)
    ("openai", "o4-mini", {"stop": ["END"]}, "stop"),
    ("openai", "o4-mini", {"temperature": 0.2}, "temperature"),
    ("openai", "o4-mini", {"top_p": 0.5}, "top_p"),
    # docs.x.ai guides/reasoning: stop "not supported by reasoning models ... would result in an error"
    ("grok", "grok-3-mini", {"stop": ["END"]}, "stop"),
    ("grok", "grok-4", {"stop": ["END"]}, "stop"),
    # Anthropic extended thinking: no temperature, top_p only 0.95..1, no forced tool use,
    # budget_tokens at least 1024 (build-with-claude/extended-thinking)
    ("anthropic", "claude-sonnet-4-5", {"temperature": 0.2, "reasoning": THINK}, "temperature"),
    ("anthropic", "claude-sonnet-4-5", {"top_p": 0.5, "reasoning": THINK}, "top_p"),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"tools": [WEATHER], "tool_choice": llm_pb2.ToolChoice(name="get_weather"), "reasoning": THINK},
        "tool_choice",
    ),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {
            "tools": [WEATHER],
            "tool_choice": llm_pb2.ToolChoice(mode=llm_pb2.TOOL_CHOICE_MODE_REQUIRED),
            "reasoning": THINK,
        },
        "tool_choice",
    ),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {
            "response_format": llm_pb2.ResponseFormat(type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
            "reasoning": THINK,
        },
        "response_format",
    ),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"reasoning": llm_pb2.ReasoningOptions(budget_tokens=512)},
        "reasoning.budget_tokens",
    ),
]


@pytest.mark.parametrize(
    ("provider", "model", "fields", "field"), REFUSALS, ids=[f"{p}-{f}" for p, _, _, f in REFUSALS]
)
async def test_capability_refusal(
    llm: LLMHarness, provider: str, model: str, fields: dict[str, Any], field: str
) -> None:
    llm.vault.keys[("u-alice", provider)] = llm.vault.keys[("u-alice", "openai")]
    request = llm_pb2.ChatRequest(provider=provider, model=model, **{"messages": [_msg()], **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(request, metadata=auth())
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "CAPABILITY_UNSUPPORTED"
    assert error.metadata == {"provider": provider, "model": model, "field": field}
    assert error.message.startswith(f"{field}: ")
    assert llm.adapter.calls == []


async def test_a_model_missing_from_the_registry_passes_through(llm: LLMHarness) -> None:
    request = llm_pb2.ChatRequest(
        provider="openai",
        model="gpt-9-unlisted",
        tools=[WEATHER],
        parallel_tool_calls=True,
        response_format=llm_pb2.ResponseFormat(
            type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=schema(type="object")
        ),
        reasoning=llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_HIGH, include_reasoning=True),
        messages=[_msg(parts=[_image()])],
    )
    await llm.stub.Chat(request, metadata=auth())
    params = llm.adapter.calls[-1].params
    assert params.model == "gpt-9-unlisted"
    assert [t.name for t in params.tools] == ["get_weather"]
    assert params.reasoning is not None and params.reasoning.effort == "high" and params.reasoning.include
    assert params.response_format is not None and params.response_format.type == "json_schema"


async def test_a_tool_loop_request_reaches_the_adapter_whole(llm: LLMHarness) -> None:
    state = b'{"v":1,"format":"openai"}'
    request = llm_pb2.ChatRequest(
        provider="openai",
        tools=[WEATHER],
        tool_choice=llm_pb2.ToolChoice(name="get_weather"),
        messages=[
            _msg(content="weather?"),
            _msg(ASSISTANT, "", tool_calls=[CALL], provider_state=state),
            _msg(TOOL, "12C", tool_call_id="call_1"),
        ],
    )
    await llm.stub.Chat(request, metadata=auth())
    messages = llm.adapter.calls[-1].params.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)
    assert messages[1].provider_state == state
    assert messages[2].tool_call_id == "call_1"
    assert llm.adapter.calls[-1].params.tool_choice is not None


async def test_a_provider_reusing_call_ids_across_turns_is_accepted(llm: LLMHarness) -> None:
    """Ids are unique within an answer; a later turn may reuse one (its result answers the latest)."""
    request = llm_pb2.ChatRequest(
        provider="openai",
        messages=[
            _msg(content="weather?"),
            _msg(ASSISTANT, "", tool_calls=[CALL]),
            _msg(TOOL, "12C", tool_call_id="call_1"),
            _msg(ASSISTANT, "", tool_calls=[CALL]),
            _msg(TOOL, "13C", tool_call_id="call_1"),
        ],
    )
    await llm.stub.Chat(request, metadata=auth())
    assert [m.role for m in llm.adapter.calls[-1].params.messages][-2:] == ["assistant", "tool"]
