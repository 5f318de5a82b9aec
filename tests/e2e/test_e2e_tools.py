"""A two-turn tool loop for every provider through the live vault and LLM service.

Turn one declares a tool and gets two parallel tool calls (the wire format's
recorded transcript, replayed by the fake provider); turn two sends the answer
back (its tool calls and ``provider_state``) with one tool result per call and
gets the final text. The Python client runs the loop unary, grpcurl runs it
streaming; each time the request bodies the fake provider received must equal
the expected ones of ``fakes/transcripts/requests`` (with the provider's own
model and max-tokens field), including the Gemini thought signature sent back
unchanged on the first parallel call only.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import conversations, transcripts
from fakes.harness import KEYS
from testkit import grpcurl
from testkit.stack import Stack

from clients import Client, Message, Reasoning, Role, Tool
from rmllm_common.registry import default_registry

FIRST = {
    "openai": "openai_parallel_tools",
    "anthropic": "anthropic_parallel_tools",
    "gemini": "gemini_parallel_tools",
}
SECOND = {"openai": "openai_basic", "anthropic": "anthropic_basic", "gemini": "gemini_basic"}
PROVIDERS = sorted(default_registry().providers)
WEATHER = Tool("get_weather", conversations.WEATHER.description, conversations.WEATHER_SCHEMA)
SYSTEM = "You are a concise assistant."
QUESTION = "What is the weather in São Paulo and in Tokyo?"


@pytest.fixture(scope="module")
def client(stack: Stack, token: str) -> Iterator[Client]:
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        for provider in PROVIDERS:
            c.put_config(provider, KEYS[provider], base_url=stack.base_url(provider))
        yield c


def _format(provider: str) -> str:
    return default_registry().providers[provider].wire_format


def _parallel(provider: str) -> bool | None:
    spec = default_registry().providers[provider]
    model = spec.model(spec.default_model)
    return True if model is None or model.supports("parallel_tools") else None


def _reasoning(provider: str) -> Reasoning | None:
    params = transcripts.load(FIRST[_format(provider)]).params.get("reasoning")
    return Reasoning(params["effort"], include=params["include"]) if params else None


def expected_bodies(provider: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recorded request bodies of the wire format, for this provider's model and fields."""
    spec = default_registry().providers[provider]
    name = FIRST[spec.wire_format]
    data = json.loads((transcripts.DIRECTORY / "requests" / f"{name}.json").read_text())
    bodies = []
    for body in (copy.deepcopy(data["body"]), copy.deepcopy(data["second_body"])):
        if spec.wire_format == "openai":
            body["model"] = spec.default_model
            body[spec.max_tokens_field] = body.pop("max_completion_tokens")
            if _parallel(provider) is None:
                del body["parallel_tool_calls"]
        elif spec.wire_format == "anthropic":
            body["model"] = spec.default_model
        bodies.append(body)
    return bodies[0], bodies[1]


def chat_posts(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.requests() if r["method"] == "POST"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_loop_unary_through_the_python_client(stack: Stack, client: Client, provider: str) -> None:
    stack.reset_fake()
    wire = _format(provider)
    want = transcripts.load(FIRST[wire]).expect
    first_body, second_body = expected_bodies(provider)
    options: dict[str, Any] = {
        "system": SYSTEM,
        "max_tokens": 1024,
        "tools": [WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": _parallel(provider),
        "reasoning": _reasoning(provider),
    }

    stack.enqueue({"transcript": FIRST[wire], "chunks": [5]})
    question = Message(Role.USER, QUESTION)
    first = client.chat(provider, [question], **options)
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [tuple(c) for c in want["tool_calls"]]
    assert first.finish_reason == "tool_calls"
    assert first.provider_state == want.get("provider_state", "").encode()

    stack.enqueue({"transcript": SECOND[wire], "chunks": [5]})
    results = [Message.tool_result(call, conversations.RESULTS[i]) for i, call in enumerate(first.tool_calls)]
    final = client.chat(provider, [question, first.message(), *results], **options)
    assert final.text == transcripts.load(SECOND[wire]).expect["text"]

    posts = chat_posts(stack)
    assert [p["json"] for p in posts] == [first_body, second_body]
    assert all(p["provider"] == provider for p in posts)


def _stream(stack: Stack, token: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    result = grpcurl.run(
        stack.llm.address, "realmultillm.llm.v1.LLMService/StreamChat", data=body, token=token
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(m) for m in _json_objects(result.stdout)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_loop_streaming_through_grpcurl(stack: Stack, client: Client, token: str, provider: str) -> None:
    stack.reset_fake()
    wire = _format(provider)
    want = transcripts.load(FIRST[wire]).expect
    first_body, second_body = expected_bodies(provider)
    request: dict[str, Any] = {
        "provider": provider,
        "maxTokens": 1024,
        "tools": [
            {"name": WEATHER.name, "description": WEATHER.description, "parameters": WEATHER.parameters}
        ],
        "toolChoice": {"mode": "TOOL_CHOICE_MODE_AUTO"},
    }
    if _parallel(provider):
        request["parallelToolCalls"] = True
    reasoning = _reasoning(provider)
    if reasoning is not None and reasoning.effort is not None:
        request["reasoning"] = {
            "effort": f"REASONING_EFFORT_{reasoning.effort.upper()}",
            "includeReasoning": True,
        }
    messages: list[dict[str, Any]] = [
        {"role": "ROLE_SYSTEM", "content": SYSTEM},
        {"role": "ROLE_USER", "content": QUESTION},
    ]

    stack.enqueue({"transcript": FIRST[wire], "chunks": [1, 3, 11]})
    events = _stream(stack, token, {**request, "messages": messages})
    deltas = [e["toolCallDelta"] for e in events if "toolCallDelta" in e]
    done = events[-1]["done"]
    assembled: dict[int, str] = {}
    for delta in deltas:
        assembled[delta.get("index", 0)] = assembled.get(delta.get("index", 0), "") + delta.get(
            "argumentsDelta", ""
        )
    calls = done["toolCalls"]
    assert [(c["id"], c["name"], c.get("arguments", "")) for c in calls] == [
        tuple(c) for c in want["tool_calls"]
    ]
    assert [assembled[i] for i in range(len(calls))] == [c["arguments"] for c in calls]
    state = base64.b64decode(done.get("providerState", ""))
    assert state == want.get("provider_state", "").encode()
    assert "".join(e.get("reasoningDelta", "") for e in events) == want.get("reasoning", "")

    answer: dict[str, Any] = {
        "role": "ROLE_ASSISTANT",
        "content": "".join(e.get("delta", "") for e in events),
    }
    answer["toolCalls"] = calls
    if done.get("providerState"):
        answer["providerState"] = done["providerState"]
    results = [
        {"role": "ROLE_TOOL", "toolCallId": c["id"], "content": conversations.RESULTS[i]}
        for i, c in enumerate(calls)
    ]
    stack.enqueue({"transcript": SECOND[wire], "chunks": [2]})
    final = _stream(stack, token, {**request, "messages": [*messages, answer, *results]})
    assert "".join(e.get("delta", "") for e in final) == transcripts.load(SECOND[wire]).expect["text"]

    posts = chat_posts(stack)
    assert [p["json"] for p in posts] == [first_body, second_body]
    if wire == "gemini":
        model_turn = posts[1]["json"]["contents"][1]["parts"]
        signatures = [p.get("thoughtSignature") for p in model_turn if "functionCall" in p]
        assert signatures[0] and signatures[1:] == [None]
        assert signatures[0] in transcripts.load(FIRST[wire]).body.decode()


def _json_objects(text: str) -> Iterator[str]:
    """grpcurl prints one pretty JSON object per stream message."""
    decoder = json.JSONDecoder()
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return
        _, end = decoder.raw_decode(text, index)
        yield text[index:end]
        index = end


# One streaming tool-call transcript per wire format (Ollama's native /api/chat
# included: its base URL is the bare origin), through grpcurl.
STREAMED_CALLS = (
    "openai_parallel_tools",
    "openrouter_reasoning_details",
    "anthropic_parallel_tools",
    "gemini_parallel_tools",
    "ollama_native_tools",
)


@pytest.mark.parametrize("name", STREAMED_CALLS)
def test_streamed_tool_calls_print_as_the_proto_json_mapping(stack: Stack, name: str) -> None:
    """What grpcurl prints: camelCase names, enums by name, int64 as strings; each call's
    first ``toolCallDelta`` (and only it) with its id and name, its fragments
    concatenating to exactly ``done.toolCalls``' arguments; one ``done``, last."""
    recorded = transcripts.load(name)
    want = recorded.expect
    user = stack.create_user(f"e2e-json-{name.replace('_', '-')}")
    path = recorded.base_path
    base = stack.base_url(recorded.provider) if path is None else stack.fake_origin + path
    with Client(user, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        c.put_config(recorded.provider, KEYS[recorded.provider], base_url=base)
    request: dict[str, Any] = {
        "provider": recorded.provider,
        "model": recorded.params.get("model", default_registry().providers[recorded.provider].default_model),
        "messages": [{"role": "ROLE_USER", "content": QUESTION}],
        "tools": [
            {"name": WEATHER.name, "description": WEATHER.description, "parameters": WEATHER.parameters}
        ],
    }
    if "reasoning" in recorded.params:
        request["reasoning"] = {"effort": "REASONING_EFFORT_LOW", "includeReasoning": True}
    stack.enqueue({"transcript": name, "chunks": [1, 3, 11]})
    events = _stream(stack, user, request)

    kinds = {"delta", "reasoningDelta", "toolCallDelta"}
    assert all(len(e) == 1 and next(iter(e)) in kinds for e in events[:-1]), events
    assert list(events[-1]) == ["done"]
    calls: list[dict[str, str]] = []
    for event in events[:-1]:
        delta = event.get("toolCallDelta")
        if delta is None:
            continue
        assert set(delta) <= {"index", "id", "name", "argumentsDelta"}
        index = delta.get("index", 0)  # proto3 JSON leaves a zero out
        if index == len(calls):
            assert delta["id"] and delta["name"], delta
            calls.append({"id": delta["id"], "name": delta["name"], "arguments": ""})
        else:
            assert index < len(calls) and "id" not in delta and "name" not in delta, delta
        calls[index]["arguments"] += delta.get("argumentsDelta", "")
    done = events[-1]["done"]
    assert done["finishReason"] == f"FINISH_REASON_{want['finish_reason']}"
    assert [(c["id"], c["name"], c.get("arguments", "")) for c in done["toolCalls"]] == [
        tuple(c) for c in want["tool_calls"]
    ]
    assert calls == done["toolCalls"]
    usage = done["usage"]
    counts = (
        want["usage"]
        if isinstance(want["usage"], dict)
        else dict(zip(("input_tokens", "output_tokens", "total_tokens"), want["usage"], strict=True))
    )
    for field, value in counts.items():
        camel = "".join(p if i == 0 else p.title() for i, p in enumerate(field.split("_")))
        assert usage[camel] == str(value)  # int64 is a JSON string
    assert usage["usageReported"] is True
    assert done["provider"] == recorded.provider and done["model"] == want["model"]
    assert done.get("responseId", "") == want["response_id"]
    assert "".join(e.get("delta", "") for e in events) == want["text"]
    assert "".join(e.get("reasoningDelta", "") for e in events) == want.get("reasoning", "")
