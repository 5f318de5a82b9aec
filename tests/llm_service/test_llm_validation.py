"""Bad inputs: every violation is INVALID_ARGUMENT with one ErrorInfo and a BadRequest.

The table goes through a real server (Chat and StreamChat share the validator);
a hypothesis property checks that the validator never fails any other way.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import LLMHarness, auth, llm_harness, rich_error

from clients.errors import ResourceExhausted, from_grpc_error
from llm_service.validation import MAX_CONTENT_BYTES, validate_chat
from rmllm_common.errors import InvalidRequest
from rmllm_common.registry import default_registry

USER = llm_pb2.ROLE_USER


def msg(content: str = "hi", role: int = USER) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=role, content=content)  # type: ignore[arg-type]


BAD: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("no messages", {"messages": []}, "INVALID_REQUEST", ["messages"]),
    ("too many messages", {"messages": [msg()] * 1001}, "INVALID_REQUEST", ["messages"]),
    ("unspecified role", {"messages": [msg(role=0)]}, "INVALID_REQUEST", ["messages[0].role"]),
    ("unknown role", {"messages": [msg(), msg(role=9)]}, "INVALID_REQUEST", ["messages[1].role"]),
    ("empty content", {"messages": [msg("")]}, "INVALID_REQUEST", ["messages[0].content"]),
    (
        "content over 1 MiB",
        {"messages": [msg("x" * (MAX_CONTENT_BYTES + 1))]},
        "INVALID_REQUEST",
        ["messages[0].content"],
    ),
    (
        "multibyte content over 1 MiB",
        {"messages": [msg("é" * (MAX_CONTENT_BYTES // 2 + 1))]},
        "INVALID_REQUEST",
        ["messages[0].content"],
    ),
    ("total over 4 MiB", {"messages": [msg("x" * MAX_CONTENT_BYTES)] * 5}, "INVALID_REQUEST", ["messages"]),
    ("temperature high", {"temperature": 2.01}, "INVALID_REQUEST", ["temperature"]),
    ("temperature negative", {"temperature": -0.1}, "INVALID_REQUEST", ["temperature"]),
    ("temperature nan", {"temperature": float("nan")}, "INVALID_REQUEST", ["temperature"]),
    ("top_p high", {"top_p": 1.5}, "INVALID_REQUEST", ["top_p"]),
    ("max_tokens zero", {"max_tokens": 0}, "INVALID_REQUEST", ["max_tokens"]),
    ("max_tokens huge", {"max_tokens": 1_000_001}, "INVALID_REQUEST", ["max_tokens"]),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "INVALID_REQUEST", ["stop"]),
    ("empty stop", {"stop": [""]}, "INVALID_REQUEST", ["stop[0]"]),
    ("long stop", {"stop": ["ok", "s" * 257]}, "INVALID_REQUEST", ["stop[1]"]),
    ("long model", {"model": "m" * 201}, "INVALID_REQUEST", ["model"]),
    ("model with spaces", {"model": "gpt 4"}, "INVALID_REQUEST", ["model"]),
    ("unknown provider", {"provider": "nope"}, "UNKNOWN_PROVIDER", ["provider"]),
    ("empty provider", {"provider": ""}, "UNKNOWN_PROVIDER", ["provider"]),
    (
        "several at once",
        {"temperature": 3.0, "top_p": -1.0, "messages": [msg(role=0)]},
        "INVALID_REQUEST",
        ["messages[0].role", "temperature", "top_p"],
    ),
]


def _request(kind: type[Any], fields: dict[str, Any]) -> Any:
    base: dict[str, Any] = {"provider": "openai", "messages": [msg()]}
    return kind(**{**base, **fields})


@pytest.mark.parametrize(("name", "fields", "reason", "bad_fields"), BAD, ids=[b[0] for b in BAD])
async def test_bad_request(
    llm: LLMHarness, name: str, fields: dict[str, Any], reason: str, bad_fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(_request(llm_pb2.ChatRequest, fields), metadata=auth())
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [field for field, _ in rich.violations] == bad_fields
    assert rich.message.startswith(bad_fields[0])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in llm.stub.StreamChat(_request(llm_pb2.StreamChatRequest, fields), metadata=auth()):
            pass
    assert rich_error(caught.value).reason == reason
    # Refused before the vault or a provider is asked.
    assert llm.vault.calls == []
    assert llm.adapter.calls == []


async def test_limits_are_inclusive(llm: LLMHarness) -> None:
    fields = {
        "messages": [msg("x" * MAX_CONTENT_BYTES)] * 4,
        "temperature": 2.0,
        "top_p": 1.0,
        "max_tokens": 1_000_000,
        "stop": ["s" * 256] * 4,
        "model": "m" * 200,
    }
    reply = await llm.stub.Chat(_request(llm_pb2.ChatRequest, fields), metadata=auth())
    assert reply.content == "Hello, world"


async def test_a_request_over_the_grpc_size_limit_is_refused(llm: LLMHarness) -> None:
    """Past twice RMLLM_MAX_REQUEST_BYTES (default 32 MiB), gRPC itself refuses the message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(
            _request(llm_pb2.ChatRequest, {"messages": [msg("x" * (65 * 1024 * 1024))]}), metadata=auth()
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert llm.vault.calls == []
    typed = from_grpc_error(caught.value)  # the Python client says what to do about it
    assert isinstance(typed, ResourceExhausted)
    assert "RMLLM_MAX_REQUEST_BYTES" in typed.message and "smaller" in typed.message


async def test_a_request_over_the_request_limit_gets_a_clear_invalid_argument() -> None:
    """Between RMLLM_MAX_REQUEST_BYTES and gRPC's own limit (twice it): a message that says what to do."""
    limit = 4 * 1024 * 1024 + 65536
    image = llm_pb2.ContentPart(image=llm_pb2.ImagePart(data=b"\x89PNG" * 300_000, mime_type="image/png"))
    request = llm_pb2.ChatRequest(
        provider="openai",
        messages=[llm_pb2.ChatMessage(role=USER, content="what is in these?", parts=[image] * 5)],
    )
    async with llm_harness({"RMLLM_MAX_REQUEST_BYTES": str(limit)}) as llm:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(request, metadata=auth())
        assert llm.vault.calls == []
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert "RMLLM_MAX_REQUEST_BYTES" in error.message
    assert [field for field, _ in error.violations] == ["messages"]


messages = st.lists(
    st.builds(llm_pb2.ChatMessage, role=st.integers(-1, 5), content=st.text(max_size=20)), max_size=4
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    provider=st.sampled_from(["openai", "claude", "GEMINI", "", "x"]),
    model=st.text(max_size=8),
    messages=messages,
    temperature=st.none() | st.floats(allow_nan=True),
    top_p=st.none() | st.floats(allow_nan=True),
    max_tokens=st.none() | st.integers(-(2**31), 2**31 - 1),
    stop=st.lists(st.text(max_size=3), max_size=6),
)
def test_validator_accepts_or_explains(  # noqa: PLR0917 - one argument per hypothesis strategy
    provider: str,
    model: str,
    messages: list[llm_pb2.ChatMessage],
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    stop: list[str],
) -> None:
    request = llm_pb2.ChatRequest(provider=provider, model=model, messages=messages, stop=stop)
    if temperature is not None:
        request.temperature = temperature
    if top_p is not None:
        request.top_p = top_p
    if max_tokens is not None:
        request.max_tokens = max_tokens
    try:
        chat = validate_chat(request, default_registry())
    except InvalidRequest as exc:
        assert exc.violations
        assert exc.message.startswith(exc.violations[0].field)
        return
    sent = chat.request
    assert 1 <= len(sent.messages) <= 1000
    assert all(m.content and m.role in ("system", "user", "assistant") for m in sent.messages)
    assert sent.temperature is None or 0 <= sent.temperature <= 2
    assert sent.max_tokens is None or 1 <= sent.max_tokens <= 1_000_000
