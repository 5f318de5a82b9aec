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
