"""Chat parameters: both chat requests carry the same fields, and defaults are resolved once.

``ChatInput.params`` is the one place the caller's stored settings and the
registry's defaults fill a request; the adapters' body builders send what the
resolved parameters say and never apply a default of their own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters import anthropic, gemini, openai
from llm_service.adapters.base import ChatParams, Endpoint, Message
from llm_service.validation import validate_chat
from rmllm_common.registry import default_registry, load_registry
from rmllm_common.secret import Secret

BUILDERS = {"openai": openai.build_body, "anthropic": anthropic.build_body, "gemini": gemini.build_body}


def shape(field: FieldDescriptor) -> tuple[Any, ...]:
    """Everything about a field that the wire and the generated code depend on."""
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.message_type.full_name if field.message_type else None,
        field.enum_type.full_name if field.enum_type else None,
        field.has_presence,
    )


def fields(message: Descriptor) -> dict[str, tuple[Any, ...]]:
    return {f.name: shape(f) for f in message.fields}


def test_chat_and_stream_chat_requests_have_identical_fields() -> None:
    chat, stream = fields(llm_pb2.ChatRequest.DESCRIPTOR), fields(llm_pb2.StreamChatRequest.DESCRIPTOR)
    assert chat == stream
    assert {"provider", "model", "messages", "max_tokens"} <= set(chat)


def test_the_field_comparison_sees_a_difference() -> None:
    # The comparison is not vacuous: two messages that differ do not compare equal.
    assert fields(llm_pb2.ChatRequest.DESCRIPTOR) != fields(llm_pb2.ChatResponse.DESCRIPTOR)
    number_changed = {**fields(llm_pb2.ChatRequest.DESCRIPTOR)}
    first = next(iter(number_changed))
    number_changed[first] = (99, *number_changed[first][1:])
    assert number_changed != fields(llm_pb2.StreamChatRequest.DESCRIPTOR)


def test_every_chat_params_field_is_filled_from_the_request() -> None:
    # A field added to ChatParams must come from the request, or this names it.
    request = llm_pb2.ChatRequest(
        provider="openai",
        model="gpt-4o",
        messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi")],
        temperature=0.5,
        max_tokens=9,
        top_p=0.25,
        stop=["END"],
        tools=[llm_pb2.Tool(name="f")],
        tool_choice=llm_pb2.ToolChoice(mode=llm_pb2.TOOL_CHOICE_MODE_AUTO),
        parallel_tool_calls=True,
        response_format=llm_pb2.ResponseFormat(type=llm_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
        reasoning=llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_LOW),
    )
    chat = validate_chat(request, default_registry())
    sent = chat.request
    for field in dataclasses.fields(ChatParams):
        assert getattr(sent, field.name) not in (None, "", ()), field.name
    # Resolving the caller's settings carries every field over (the request's own values win;
    # a model the registry does not list, so that no capability check refuses the request).
    unlisted_request = llm_pb2.ChatRequest()
    unlisted_request.CopyFrom(request)
    unlisted_request.model = "unlisted-model"
    unlisted = validate_chat(unlisted_request, default_registry())
    assert unlisted.params("other-model", 1.5, 77) == unlisted.request


@pytest.mark.parametrize("provider", sorted(default_registry().providers))
def test_defaults_are_resolved_once_and_adapters_send_them_as_given(provider: str) -> None:
    spec = default_registry().providers[provider]
    build = BUILDERS[spec.wire_format]
    endpoint = Endpoint(spec, spec.base_url, Secret("k"))
    request = llm_pb2.ChatRequest(
        provider=provider, messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi")]
    )
    chat = validate_chat(request, default_registry())
    resolved = chat.params()
    assert resolved.model == spec.default_model
    assert resolved.max_tokens == spec.default_max_tokens
    assert chat.params(max_tokens=321).max_tokens == 321  # the caller's stored setting wins
    # The builder sends exactly the resolved value, and nothing when the parameters carry none.
    given = ChatParams("m", (Message("user", "hi"),), max_tokens=123)
    assert 123 in max_tokens_sent(build(endpoint, given))
    assert max_tokens_sent(build(endpoint, dataclasses.replace(given, max_tokens=None))) == []


def max_tokens_sent(body: dict[str, Any]) -> list[Any]:
    config = body.get("generationConfig", {})
    return [v for k, v in (*body.items(), *config.items()) if "max" in k.lower() and "token" in k.lower()]


def test_registry_refuses_an_anthropic_provider_without_a_max_tokens_default(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.claude2]
display_name = "Claude"
wire_format = "anthropic"
base_url = "https://api.anthropic.com/v1"
auth = "x-api-key"
default_model = "claude-x"
probe = { path = "/models" }
"""
    )
    with pytest.raises(ValueError, match="default_max_tokens"):
        load_registry(path)
    path.write_text(path.read_text() + "default_max_tokens = 1024\n")
    assert load_registry(path).providers["claude2"].default_max_tokens == 1024


@pytest.mark.parametrize(
    ("provider", "model", "reasoning"),
    [
        ("openai", "o4-mini", None),  # "Unsupported parameter: 'temperature' ..." on o-series
        ("anthropic", "claude-sonnet-4-5", llm_pb2.ReasoningOptions(effort=llm_pb2.REASONING_EFFORT_LOW)),
    ],
)
def test_a_stored_temperature_is_not_applied_where_the_request_cannot_take_one(
    provider: str, model: str, reasoning: Any
) -> None:
    """The caller's stored temperature is a default: a model that refuses any temperature
    (o4-mini; Claude with extended thinking) gets none rather than a 400 on every request."""
    request = llm_pb2.ChatRequest(
        provider=provider,
        model=model,
        messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi")],
        reasoning=reasoning,
    )
    assert validate_chat(request, default_registry()).params(temperature=0.7).temperature is None
    plain = llm_pb2.ChatRequest(
        provider=provider, model="gpt-4o" if provider == "openai" else model, messages=request.messages
    )
    assert validate_chat(plain, default_registry()).params(temperature=0.7).temperature == 0.7
