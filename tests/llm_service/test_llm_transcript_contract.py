"""Every recorded transcript through the LLM service: what Chat and StreamChat answer.

The adapter tests pin what each wire format's adapter yields; these pin what the
caller reads over gRPC when the fake provider replays the same bytes: Chat's
content, finish reason, usage (every field, ``usage_reported`` and the price),
model, response id, tool calls, reasoning and provider state exactly as the
transcript says; StreamChat, in several deliveries, ends with exactly one
``done`` equal to Chat's answer, its text deltas never empty and concatenating to
Chat's content, each tool call's first delta (and only it) carrying the call's id
and name, and its argument fragments concatenating to exactly its arguments.
A transcript that ends in a provider error, or a stream cut before its end,
ends both calls with the mapped non-OK status (one ErrorInfo naming the
provider) after the text that came before it; every answer carries
``x-request-id``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from fakes import FakeProvider, Scenario, transcripts
from fakes.harness import KEYS, transcript_params
from google.protobuf import struct_pb2
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import LLMHarness, auth, llm_harness, rich_error

from llm_service.adapters.base import ChatParams
from rmllm_common import errors
from rmllm_common.registry import default_registry

ROLES = {
    "system": llm_pb2.ROLE_SYSTEM,
    "user": llm_pb2.ROLE_USER,
    "assistant": llm_pb2.ROLE_ASSISTANT,
    "tool": llm_pb2.ROLE_TOOL,
}
MODES = {"auto": 1, "none": 2, "required": 3}
FORMATS = {"text": 1, "json_object": 2, "json_schema": 3}
EFFORTS = {"low": 1, "medium": 2, "high": 3}
DELIVERIES: dict[str, dict[str, Any]] = {
    "whole": {},
    "bytewise": {"chunks": (1,)},
    "pieces": {"chunks": (7, 1, 23)},
}


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def proto_fields(sent: ChatParams, provider: str) -> dict[str, Any]:
    """The ChatRequest / StreamChatRequest fields that ask for ``sent``."""
    fields: dict[str, Any] = {
        "provider": provider,
        "model": sent.model,
        "messages": [llm_pb2.ChatMessage(role=ROLES[m.role], content=m.content) for m in sent.messages],
    }
    if sent.max_tokens is not None:
        fields["max_tokens"] = sent.max_tokens
    if sent.tools:
        fields["tools"] = [
            llm_pb2.Tool(name=t.name, description=t.description, parameters=_struct(t.parameters))
            for t in sent.tools
        ]
    if sent.tool_choice is not None:
        fields["tool_choice"] = (
            llm_pb2.ToolChoice(name=sent.tool_choice.name)
            if sent.tool_choice.name
            else llm_pb2.ToolChoice(mode=MODES[sent.tool_choice.mode or "auto"])  # type: ignore[arg-type]
        )
    if sent.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = sent.parallel_tool_calls
    fmt = sent.response_format
    if fmt is not None:
        fields["response_format"] = llm_pb2.ResponseFormat(
            type=FORMATS[fmt.type],  # type: ignore[arg-type]
            name=fmt.name,
            schema=_struct(fmt.schema),
            strict=fmt.strict,
        )
    if sent.reasoning is not None:
        fields["reasoning"] = llm_pb2.ReasoningOptions(
            effort=EFFORTS.get(sent.reasoning.effort or "", 0),  # type: ignore[arg-type]
            budget_tokens=sent.reasoning.budget_tokens,
            include_reasoning=sent.reasoning.include,
        )
    return fields


@asynccontextmanager
async def gateway(transcript: transcripts.Transcript) -> AsyncIterator[tuple[LLMHarness, FakeProvider]]:
    async with FakeProvider() as fake:
        env = {
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": f"127.0.0.1:{fake.port}",
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
        }
        async with llm_harness(env, real_adapters=True) as llm:
            provider = transcript.provider
            path = transcript.base_path
            base = fake.base_url(provider) if path is None else fake.origin + path
            llm.vault.keys[("u-alice", provider)] = StoredKey(KEYS[provider] or "", base_url=base)
            yield llm, fake


@dataclass
class Streamed:
    """What a caller reads from a StreamChat."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    dones: list[llm_pb2.StreamChatDone] = field(default_factory=list)
    after_done: int = 0

    def take(self, message: llm_pb2.StreamChatResponse) -> None:
        if self.dones:
            self.after_done += 1
        kind = message.WhichOneof("event")
        if kind == "delta":
            assert message.delta, "an empty text delta"
            self.text.append(message.delta)
        elif kind == "reasoning_delta":
            assert message.reasoning_delta, "an empty reasoning delta"
            self.reasoning.append(message.reasoning_delta)
        elif kind == "tool_call_delta":
            d = message.tool_call_delta
            if d.index == len(self.calls):
                assert d.id and d.name, f"call {d.index}'s first delta lacks its id or name: {d}"
                self.calls.append([d.id, d.name, d.arguments_delta])
            else:
                assert d.index < len(self.calls), f"index {d.index} skipped ahead"
                assert not d.id and not d.name, f"a later delta of call {d.index} names a call: {d}"
                self.calls[d.index][2] += d.arguments_delta
        else:
            assert kind == "done", kind
            self.dones.append(message.done)


def expected_usage(raw: list[int] | dict[str, Any]) -> dict[str, Any]:
    names = ("input_tokens", "output_tokens", "total_tokens")
    given = dict(zip(names, raw, strict=True)) if isinstance(raw, list) else dict(raw)
    reported = bool(given.pop("reported", True))
    want = {
        k: int(given.get(k, 0))
        for k in (*names, "cache_read_input_tokens", "cache_creation_input_tokens", "reasoning_tokens")
    }
    want["usage_reported"] = reported
    return want


def usage_dict(usage: llm_pb2.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_reported": usage.usage_reported,
    }


def request_id(metadata: Any) -> str:
    return str(dict(metadata or ()).get("x-request-id", ""))


GOOD = [n for n in transcripts.names() if not transcripts.load(n).expect_error]
BAD = [n for n in transcripts.names() if transcripts.load(n).expect_error]


@pytest.mark.parametrize("name", GOOD)
async def test_chat_and_stream_chat_answer_exactly_what_the_transcript_says(name: str) -> None:
    transcript = transcripts.load(name)
    expect = transcript.expect
    fields = proto_fields(transcript_params(transcript), transcript.provider)
    provider = default_registry().providers[transcript.provider].id
    async with gateway(transcript) as (llm, fake):
        fake.enqueue(Scenario.transcript(name))
        call = llm.stub.Chat(llm_pb2.ChatRequest(**fields), metadata=auth(), timeout=30)
        chat = await call
        assert request_id(await call.trailing_metadata()) or request_id(await call.initial_metadata())
        streams = []
        for delivery in DELIVERIES.values():
            fake.enqueue(Scenario.transcript(name, **delivery))
            out = Streamed()
            stream = llm.stub.StreamChat(llm_pb2.StreamChatRequest(**fields), metadata=auth(), timeout=30)
            async for message in stream:
                out.take(message)
            assert await stream.code() == grpc.StatusCode.OK
            assert request_id(await stream.trailing_metadata()) or request_id(await stream.initial_metadata())
            streams.append(out)

    assert chat.content == expect["text"]
    assert chat.finish_reason == llm_pb2.FinishReason.Value(f"FINISH_REASON_{expect['finish_reason']}")
    assert usage_dict(chat.usage) == expected_usage(expect["usage"])
    if "cost_usd" in expect:
        assert chat.usage.cost_usd == pytest.approx(expect["cost_usd"], abs=1e-10)
    assert chat.model == expect["model"]
    assert chat.provider == provider
    assert chat.response_id == expect["response_id"]
    calls = [(c.id, c.name, c.arguments) for c in chat.tool_calls]
    assert calls == [tuple(c) for c in expect.get("tool_calls", [])]
    assert chat.reasoning == expect.get("reasoning", "")
    if "provider_state" in expect:
        assert chat.provider_state == expect["provider_state"].encode()

    for out in streams:
        assert len(out.dones) == 1 and out.after_done == 0
        done = out.dones[0]
        assert "".join(out.text) == chat.content
        assert "".join(out.reasoning) == chat.reasoning
        assert [tuple(c) for c in out.calls] == calls
        assert done.finish_reason == chat.finish_reason
        assert done.usage == chat.usage
        assert done.model == chat.model and done.provider == chat.provider
        assert done.response_id == chat.response_id
        assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == calls
        assert done.reasoning == chat.reasoning
        assert done.provider_state == chat.provider_state


@pytest.mark.parametrize("name", BAD)
async def test_an_in_band_provider_error_ends_both_calls_with_its_status(name: str) -> None:
    transcript = transcripts.load(name)
    fields = proto_fields(transcript_params(transcript), transcript.provider)
    async with gateway(transcript) as (llm, fake):
        fake.enqueue(Scenario.transcript(name))
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await llm.stub.Chat(llm_pb2.ChatRequest(**fields), metadata=auth(), timeout=30)
        for delivery in DELIVERIES.values():
            fake.enqueue(Scenario.transcript(name, **delivery))
            out = Streamed()
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                async for message in llm.stub.StreamChat(
                    llm_pb2.StreamChatRequest(**fields), metadata=auth(), timeout=30
                ):
                    out.take(message)
            assert not out.dones
            assert "".join(out.text) == transcript.expect_error["text_before"]
            check_error(streamed.value, name)
    check_error(unary.value, name)


def check_error(error: grpc.aio.AioRpcError, name: str) -> None:
    transcript = transcripts.load(name)
    cls = getattr(errors, transcript.expect_error["class"])
    got = rich_error(error)
    assert got.reason == cls.reason
    assert got.code == cls.code
    assert got.metadata.get("provider") == transcript.provider
    assert request_id(error.trailing_metadata()) or request_id(error.initial_metadata())


@pytest.mark.parametrize("name", GOOD)
@pytest.mark.parametrize("how", ["end_at", "truncate_at"])
async def test_a_cut_stream_is_upstream_stream_truncated_in_both_calls(name: str, how: str) -> None:
    transcript = transcripts.load(name)
    spec = default_registry().providers[transcript.provider]
    async with gateway(transcript) as (llm, fake):
        base = llm.vault.keys[("u-alice", transcript.provider)].base_url
        cut = transcript.end_offset(spec.wire_format_at(base))
        fields = proto_fields(transcript_params(transcript), transcript.provider)
        fake.enqueue(Scenario.transcript(name, chunks=(7,), **{how: cut}))
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await llm.stub.Chat(llm_pb2.ChatRequest(**fields), metadata=auth(), timeout=30)
        fake.enqueue(Scenario.transcript(name, chunks=(7,), **{how: cut}))
        out = Streamed()
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for message in llm.stub.StreamChat(
                llm_pb2.StreamChatRequest(**fields), metadata=auth(), timeout=30
            ):
                out.take(message)
    assert not out.dones
    assert transcript.expect["text"].startswith("".join(out.text))
    for error in (unary.value, streamed.value):
        got = rich_error(error)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_STREAM_TRUNCATED")
        assert got.metadata.get("provider") == transcript.provider
