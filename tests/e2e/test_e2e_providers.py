"""Every provider through the live services: a user stores a key in the vault, then
chats unary (Python client) and streaming (grpcurl) against the fake provider, which
replays that provider's recorded transcript byte for byte. For Ollama the stored
base URL picks the wire format: ``.../v1`` the OpenAI-compatible path, the bare
origin (as Ollama's docs write it) or ``.../api`` the native ``/api/chat`` NDJSON."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from fakes import transcripts
from fakes.harness import KEYS
from testkit import grpcurl
from testkit.stack import Stack

from clients import Client
from rmllm_common.registry import default_registry

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


# stored base URL path -> (the transcript the fake replays, the path the service must call)
OLLAMA_BASES = {
    "": ("ollama_native_basic", "/api/chat"),
    "/": ("ollama_native_basic", "/api/chat"),
    "/api": ("ollama_native_thinking", "/api/chat"),
    "/v1": ("ollama_basic", "/v1/chat/completions"),
}


_OLLAMA_USERS = itertools.count()


@pytest.fixture
def ollama_user(stack: Stack) -> str:
    """A user of the test's own, whose llama base URL no other test (nor a cached resolve
    of the LLM service) shares."""
    return stack.create_user(f"e2e-ollama-{next(_OLLAMA_USERS)}")


@pytest.mark.parametrize("path", sorted(OLLAMA_BASES))
def test_ollama_base_url_picks_the_wire_format(stack: Stack, ollama_user: str, path: str) -> None:
    name, called = OLLAMA_BASES[path]
    want = transcripts.load(name).expect
    with Client(ollama_user, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        c.put_config("llama", "", base_url=stack.fake_origin + path)
        stack.enqueue({"transcript": name, "chunks": [5]})
        result = c.chat("ollama", "Hello")
        assert result.text == want["text"]
        assert result.finish_reason.upper() == want["finish_reason"]
        assert [result.usage.input_tokens, result.usage.output_tokens] == counts(want)[:2]
        assert stack.requests()[-1]["path"] == called

        stack.enqueue({"transcript": name, "chunks": [1, 2, 7]})
        body = {"provider": "llama", "messages": [{"role": "ROLE_USER", "content": "Hello"}]}
        streamed = grpcurl.run(
            stack.llm.address, "realmultillm.llm.v1.LLMService/StreamChat", data=body, token=ollama_user
        )
        assert streamed.returncode == 0, streamed.stderr
        messages = [json.loads(m) for m in _json_objects(streamed.stdout)]
        assert "".join(m.get("delta", "") for m in messages[:-1]) == want["text"]
        done = messages[-1]["done"]
        assert done["finishReason"] == f"FINISH_REASON_{want['finish_reason']}"
        assert int(done["usage"]["outputTokens"]) == counts(want)[1]
        sent = stack.requests()[-1]
        assert sent["path"] == called and sent["provider"] == "llama" and not sent["disconnected"]


def test_ollama_native_truncated_and_error_streams_are_never_a_success(
    stack: Stack, ollama_user: str
) -> None:
    with Client(ollama_user, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        c.put_config("llama", "", base_url=stack.fake_origin)
    body = {"provider": "llama", "messages": [{"role": "ROLE_USER", "content": "Hello"}]}
    for name, reason in (
        ("ollama_native_truncated", "UPSTREAM_STREAM_TRUNCATED"),
        ("ollama_native_midstream_error", "PROVIDER_ERROR"),
    ):
        stack.enqueue({"transcript": name, "chunks": [3]})
        streamed = grpcurl.run(
            stack.llm.address, "realmultillm.llm.v1.LLMService/StreamChat", data=body, token=ollama_user
        )
        assert streamed.returncode != 0
        assert reason in streamed.stderr + streamed.stdout


def test_ollama_native_list_models_and_test_key_read_api_tags(stack: Stack, ollama_user: str) -> None:
    with Client(ollama_user, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        c.put_config("llama", "", base_url=stack.fake_origin + "/api")
        stack.reset_fake()
        listed = c.models("llama")
        assert listed.live and "llama3.2:latest" in [m.id for m in listed.models]
        tested = c.test_key("llama")
        assert tested.valid, tested.message
        assert [r["path"] for r in stack.requests()] == ["/api/tags", "/api/tags"]


def test_github_list_models_reads_the_catalog_at_the_origin(stack: Stack, client: Client) -> None:
    """GitHub Models' catalog is ``GET {origin}/catalog/models`` (beside ``/inference``):
    the chat models, live; the fake's catalog also lists an embedding model, left out."""
    stack.reset_fake()
    listed = client.models("github")
    registry = default_registry().providers["github"]
    assert listed.live
    assert [m.id for m in listed.models] == sorted(m.id for m in registry.models)
    windows = {m.id: m.context_window for m in registry.models}
    assert {m.id: m.context_window for m in listed.models} == windows
    assert [r["path"] for r in stack.requests()] == ["/catalog/models"]


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
