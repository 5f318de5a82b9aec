"""StreamChat joins the deltas of one network read into one message, and changes nothing else.

Pinned by content, never by message count: recorded transcripts, delivered in one
write and in small pieces, give the same concatenated text and reasoning, the same
assembled tool calls and the same ``done`` as Chat; a burst in one write becomes
fewer messages than it has deltas; deltas followed by events that carry nothing
still reach the caller before the provider sends more (nothing waits for the next
read); what came before a mid-stream failure still reaches the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from fakes import FakeProvider, Scenario
from fakes import transcripts as recorded
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import LLMHarness, auth, chat_request, llm_harness, stream_request

PROVIDER_OF = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "openrouter": "openrouter"}
TRANSCRIPTS = (
    "openai_basic",
    "openai_parallel_tools",
    "anthropic_basic",
    "anthropic_parallel_tools",
    "anthropic_thinking",
    "gemini_parallel_tools",
    "openrouter_reasoning_details",
)


@asynccontextmanager
async def gateway() -> AsyncIterator[tuple[LLMHarness, FakeProvider]]:
    async with FakeProvider() as fake:
        env = {
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": f"127.0.0.1:{fake.port}",
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
        }
        async with llm_harness(env, real_adapters=True) as llm:
            for provider in PROVIDER_OF.values():
                llm.vault.keys[("u-alice", provider)] = StoredKey(
                    f"test-key-{provider}-0123456789", base_url=fake.base_url(provider)
                )
            yield llm, fake


@dataclass
class Streamed:
    """What a caller assembles from a StreamChat."""

    messages: int = 0
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments]
    done: llm_pb2.StreamChatDone | None = None

    def take(self, message: llm_pb2.StreamChatResponse) -> None:
        self.messages += 1
        kind = message.WhichOneof("event")
        if kind == "delta":
            self.text.append(message.delta)
        elif kind == "reasoning_delta":
            self.reasoning.append(message.reasoning_delta)
        elif kind == "tool_call_delta":
            d = message.tool_call_delta
            call = self.calls.setdefault(d.index, ["", "", ""])
            call[0] = d.id or call[0]
            call[1] = d.name or call[1]
            call[2] += d.arguments_delta
        else:
            self.done = message.done

    def tool_calls(self) -> list[tuple[str, str, str]]:
        return [(c[0], c[1], c[2]) for _, c in sorted(self.calls.items())]


def request_of(name: str, stream: bool) -> llm_pb2.ChatRequest | llm_pb2.StreamChatRequest:
    provider = PROVIDER_OF[name.split("_", 1)[0]]
    reasoning = llm_pb2.ReasoningOptions(include_reasoning=True)
    make = stream_request if stream else chat_request
    return make("Hi", provider=provider, reasoning=reasoning)


async def streamed(llm: LLMHarness, request: llm_pb2.StreamChatRequest) -> Streamed:
    out = Streamed()
    async for message in llm.stub.StreamChat(request, metadata=auth(), timeout=30):
        out.take(message)
    return out


@pytest.mark.parametrize("name", TRANSCRIPTS)
async def test_text_reasoning_tool_calls_and_done_are_the_same_in_any_delivery(name: str) -> None:
    async with gateway() as (llm, fake):
        fake.enqueue(Scenario.transcript(name))
        chat = await llm.stub.Chat(request_of(name, False), metadata=auth(), timeout=30)
        outcomes = []
        for delivery in ({}, {"chunks": (7, 1, 23)}, {"chunks": (40,), "delay": 0.001}):
            fake.enqueue(Scenario.transcript(name, **delivery))
            outcomes.append(await streamed(llm, request_of(name, True)))  # type: ignore[arg-type]
    assert chat.content or chat.tool_calls
    for out in outcomes:
        assert "".join(out.text) == chat.content
        assert "".join(out.reasoning) == chat.reasoning
        assert out.tool_calls() == [(c.id, c.name, c.arguments) for c in chat.tool_calls]
        assert out.done is not None
        assert out.done.finish_reason == chat.finish_reason
        assert out.done.usage == chat.usage
        assert [(c.id, c.name, c.arguments) for c in out.done.tool_calls] == out.tool_calls()
    expect = recorded.load(name).expect
    assert "".join(outcomes[0].text) == expect.get("text", "")


async def test_a_burst_in_one_read_becomes_fewer_messages_than_deltas() -> None:
    pieces = tuple(f"word{i} " for i in range(40))
    async with gateway() as (llm, fake):
        fake.enqueue(Scenario.stream(pieces))  # the whole body in one write
        out = await streamed(llm, stream_request("Hi"))
    assert "".join(out.text) == "".join(pieces)
    assert out.done is not None
    assert len(out.text) < len(pieces)


@pytest.mark.parametrize(
    ("name", "before"), [("anthropic_basic", b"event: message_delta"), ("openai_basic", None)]
)
async def test_held_deltas_are_sent_when_the_read_ends_not_at_the_next_one(
    name: str, before: bytes | None
) -> None:
    """The provider stalls after the text (anthropic: after a ping and a block stop that
    carry nothing; openai: in the middle of the next event): the text still arrives."""
    body = recorded.load(name).body
    text = recorded.load(name).expect["text"]
    stall = body.index(before) if before else body.index(b'"finish_reason":"stop"')  # mid-event
    async with gateway() as (llm, fake):
        fake.enqueue(Scenario.transcript(name, stall_at=stall))
        call = llm.stub.StreamChat(request_of(name, True), metadata=auth(), timeout=20)
        out = Streamed()
        async for message in call:  # a held delta would wait here until the deadline
            out.take(message)
            if "".join(out.text) == text:
                break
        call.cancel()
    assert "".join(out.text) == text


async def test_deltas_before_a_mid_stream_error_still_reach_the_caller() -> None:
    name = "openrouter_midstream_error"
    async with gateway() as (llm, fake):
        fake.enqueue(Scenario.transcript(name))
        out = Streamed()
        with pytest.raises(grpc.aio.AioRpcError):
            async for message in llm.stub.StreamChat(
                stream_request("Hi", provider="openrouter"), metadata=auth(), timeout=30
            ):
                out.take(message)
    assert "".join(out.text) == recorded.load(name).expect_error["text_before"]
