"""Every provider through the live services: a user stores a key in the vault, then
chats unary (Python client) and streaming (grpcurl) against the fake provider, which
replays that provider's recorded transcript byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fakes import transcripts
from fakes.harness import KEYS
from testkit import grpcurl
from testkit.stack import Stack

from clients import Client

TRANSCRIPTS = {
    "openai": "openai_basic",
    "anthropic": "anthropic_basic",
    "google": "gemini_basic",
    "openrouter": "openrouter_basic",
    "github": "github_basic",
    "grok": "grok_reasoning",
    "llama": "ollama_basic",
}


@pytest.fixture(scope="module")
def client(stack: Stack, token: str) -> Iterator[Client]:
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        for provider in TRANSCRIPTS:
            c.put_config(provider, KEYS[provider], base_url=stack.base_url(provider))
        yield c


def expected(provider: str) -> dict[str, object]:
    return transcripts.load(TRANSCRIPTS[provider]).expect


def counts(want: dict[str, object]) -> list[int]:
    """The transcript's input, output and total tokens (listed, or named in an object)."""
    usage = want["usage"]
    if isinstance(usage, dict):
        return [int(usage.get(k, 0)) for k in ("input_tokens", "output_tokens", "total_tokens")]
    assert isinstance(usage, list)
    return [int(n) for n in usage]


@pytest.mark.parametrize("provider", sorted(TRANSCRIPTS))
def test_chat_unary_through_python_client(stack: Stack, client: Client, provider: str) -> None:
    stack.enqueue({"transcript": TRANSCRIPTS[provider], "chunks": [7]})
    result = client.chat(provider, "Hello")
    want = expected(provider)
    assert result.text == want["text"]
    assert result.finish_reason.upper() == want["finish_reason"]
    assert [result.usage.input_tokens, result.usage.output_tokens, result.usage.total_tokens] == counts(want)
    assert result.provider == provider
    sent = stack.requests()[-1]
    assert sent["provider"] == provider and not sent["disconnected"]


@pytest.mark.parametrize("provider", sorted(TRANSCRIPTS))
def test_stream_chat_through_grpcurl(stack: Stack, client: Client, token: str, provider: str) -> None:
    stack.enqueue({"transcript": TRANSCRIPTS[provider], "chunks": [1, 3, 11]})
    body = {"provider": provider, "messages": [{"role": "ROLE_USER", "content": "Hello"}]}
    result = grpcurl.run(
        stack.llm.address, "realmultillm.llm.v1.LLMService/StreamChat", data=body, token=token
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(m) for m in _json_objects(result.stdout)]
    deltas = [m["delta"] for m in messages[:-1]]
    done = messages[-1]["done"]  # grpcurl prints canonical proto3 JSON (lowerCamelCase names)
    want = expected(provider)
    assert "".join(deltas) == want["text"]
    assert all(deltas)
    assert done["finishReason"] == f"FINISH_REASON_{want['finish_reason']}"
    usage = done["usage"]
    assert [int(usage.get(k, 0)) for k in ("inputTokens", "outputTokens", "totalTokens")] == counts(want)
    assert done["provider"] == provider


def _json_objects(text: str) -> Iterator[str]:
    """grpcurl prints one pretty JSON object per stream message."""
    depth, start = 0, 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]
