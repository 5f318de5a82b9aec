"""Tools, parts, structured output and reasoning in the Python clients.

``Tool.from_function`` builds a tool from a function's signature and docstring;
requests carry tools, tool choice, response format, reasoning, images and
documents; ``stream.result`` and ``chat`` return the assembled tool calls, the
reasoning and the provider state, and ``result.message()`` sends them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from google.protobuf.json_format import MessageToDict
from realmultillm.llm.v1 import llm_pb2
from testkit.fake_grpc import FakeServers

from clients import (
    AsyncClient,
    Client,
    Document,
    Image,
    Message,
    Reasoning,
    ResponseFormat,
    Role,
    Tool,
    ToolCall,
)
from clients.errors import CapabilityUnsupported
from rmllm_common import errors

CALLS = [
    llm_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "S\\u00e3o Paulo"}'),
    llm_pb2.ToolCall(id="call_2", name="get_weather", arguments='{"city": "Tokyo"}'),
]


def get_weather(
    city: str, units: Literal["metric", "imperial"] = "metric", days: list[int] | None = None
) -> str:
    """The weather now in a city.

    Args:
        city: The city's name, e.g. Paris.
        units: Metric or imperial.
    """
    return f"{city}: sunny"


def test_tool_from_a_function_signature_and_docstring() -> None:
    tool = Tool.from_function(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "The weather now in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name, e.g. Paris."},
            "units": {"enum": ["metric", "imperial"], "description": "Metric or imperial."},
            "days": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["city"],
    }
    strict = Tool.from_function(get_weather, strict=True)
    assert strict.strict and strict.parameters is not None
    assert strict.parameters["additionalProperties"] is False


def test_a_tool_loop_with_the_sync_client(client: Client, fake: FakeServers, tmp_path: Path) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.tool_calls = list(CALLS)
    fake.state.reasoning = ["Two ", "cities."]
    fake.state.provider_state = b'{"v":1,"format":"openai"}'
    image = tmp_path / "chart.png"
    image.write_bytes(b"\x89PNG\r\n")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    question = Message(Role.USER, "Weather here?", parts=[Image.from_file(image), Document.from_file(pdf)])

    with client.stream_chat(
        "openai",
        [question],
        tools=[get_weather],
        tool_choice="required",
        parallel_tool_calls=True,
        reasoning=Reasoning("high", include=True),
    ) as stream:
        pieces: list[str] = []
        stream.on_reasoning = pieces.append  # called as each reasoning piece arrives
        text = "".join(stream)
    result = stream.result
    assert pieces == ["Two ", "cities."]
    assert text == "Hello world"  # only text deltas are iterated
    assert stream.reasoning == result.reasoning == "Two cities."
    assert result.tool_calls == tuple(ToolCall(c.id, c.name, c.arguments) for c in CALLS)
    assert [c.args() for c in result.tool_calls] == [{"city": "São Paulo"}, {"city": "Tokyo"}]
    sent = fake.state.calls[-1][1]
    assert [t.name for t in sent.tools] == ["get_weather"]
    assert MessageToDict(sent.tools[0].parameters)["required"] == ["city"]
    assert sent.tool_choice.mode == llm_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert sent.parallel_tool_calls is True
    assert sent.reasoning.effort == llm_pb2.REASONING_EFFORT_HIGH and sent.reasoning.include_reasoning
    assert sent.messages[0].parts[0].image.mime_type == "image/png"
    assert sent.messages[0].parts[1].document.data == b"%PDF-1.7"

    follow_up = [
        question,
        result.message(),
        *(Message.tool_result(call, get_weather(**call.args())) for call in result.tool_calls),
    ]
    client.chat("openai", follow_up, tools=[get_weather])
    sent = fake.state.calls[-1][1]
    assert [m.role for m in sent.messages] == [
        llm_pb2.ROLE_USER,
        llm_pb2.ROLE_ASSISTANT,
        llm_pb2.ROLE_TOOL,
        llm_pb2.ROLE_TOOL,
    ]
    assert sent.messages[1].provider_state == b'{"v":1,"format":"openai"}'
    assert list(sent.messages[1].tool_calls) == CALLS
    assert [m.tool_call_id for m in sent.messages[2:]] == ["call_1", "call_2"]
    assert sent.messages[2].content == "São Paulo: sunny"


async def test_the_async_client_returns_the_same_result(aclient: AsyncClient, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.tool_calls = list(CALLS)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    unary = await aclient.chat(
        "openai",
        "hi",
        response_format=ResponseFormat.json_schema("answer", schema),
        tool_choice="get_weather",
    )
    sent = fake.state.calls[-1][1]
    assert sent.response_format.type == llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert json.loads(json.dumps(MessageToDict(sent.response_format.schema)))["required"] == ["a"]
    assert sent.tool_choice.name == "get_weather"
    async with aclient.stream_chat("openai", "hi") as stream:
        pieces = [piece async for piece in stream]
    assert "".join(pieces) == unary.text
    assert stream.result.tool_calls == unary.tool_calls
    assert stream.result.usage.reported


def test_an_image_of_unknown_type_is_refused_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "a.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(ValueError, match="unsupported image type"):
        Image.from_file(path)


def test_a_capability_refusal_is_a_typed_error(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.fail(
        "Chat",
        errors.CapabilityUnsupported(
            "tools: github model meta/llama-3.3-70b-instruct does not support tool calling",
            provider="github",
            metadata={"model": "meta/llama-3.3-70b-instruct", "field": "tools"},
        ),
    )
    with pytest.raises(CapabilityUnsupported) as info:
        client.chat("openai", "hi", model="meta/llama-3.3-70b-instruct", tools=[get_weather])
    assert info.value.metadata["field"] == "tools"
