"""Request bodies per wire format, the tool loop's second turn, and arguments in every split.

For each transcript that names a conversation, the adapter must send exactly
``transcripts/requests/NAME.json``'s ``body``; for a tool-call transcript, the
second turn (the answer sent back with its ``provider_state``, then one tool
result per call) must be exactly its ``second_body``: OpenAI ``tool`` messages,
Anthropic thinking blocks with their signature and ``tool_result`` blocks in one
user turn, Gemini ``functionResponse`` parts with the ``thoughtSignature`` back on
the first parallel call only, Ollama ``tool`` messages naming the tool
(``tool_name``) with arguments sent back as objects. A hypothesis property replays the tool-call
transcripts in arbitrary splits: the assembled arguments never change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import FakeProvider, Scenario, conversations, transcripts
from fakes.harness import collect, endpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Message

REQUESTS = transcripts.DIRECTORY / "requests"
WITH_REQUEST = [n for n in transcripts.names() if transcripts.load(n).request]
TOOL_TRANSCRIPTS = [n for n in WITH_REQUEST if transcripts.load(n).expect.get("tool_calls")]
ANSWER_FOR = {
    "openai": "openai_basic",
    "anthropic": "anthropic_basic",
    "gemini": "gemini_basic",
    "ollama": "ollama_native_basic",
}


def expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(REQUESTS / f"{name}.json").read_text())
    return data


def test_every_wire_format_has_tool_and_structured_transcripts() -> None:
    from rmllm_common.registry import default_registry

    formats = set()
    for name in TOOL_TRANSCRIPTS:
        transcript = transcripts.load(name)
        spec = default_registry().providers[transcript.provider]
        base_url = spec.base_url if transcript.base_path is None else "http://fake" + transcript.base_path
        formats.add(spec.wire_format_at(base_url))
    assert formats == {"openai", "anthropic", "gemini", "ollama"}
    structured = {
        transcripts.load(n).provider for n in WITH_REQUEST if transcripts.load(n).request == "structured"
    }
    assert structured == {"openai", "anthropic", "google"}


@pytest.mark.parametrize("name", WITH_REQUEST)
async def test_request_body_and_second_turn_are_exact(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str
) -> None:
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider, path=transcript.base_path)
    adapter = adapter_for(ep.spec, ep.base_url)
    first = conversations.build(transcript.request, transcript.provider, transcript.params)
    fake.enqueue(Scenario.transcript(name))

    out = await collect(adapter.stream_chat(http, ep, first, 10))

    assert out.error is None, out.error
    want = expected(name)
    assert fake.requests[-1].json == want["body"]
    if not transcript.expect.get("tool_calls"):
        assert "second_body" not in want
        return
    assert out.finished is not None
    second = conversations.second_turn(first, out.text, out.finished)
    fake.enqueue(Scenario.transcript(ANSWER_FOR[ep.spec.wire_format_at(ep.base_url)]))
    again = await collect(adapter.stream_chat(http, ep, second, 10))
    assert again.error is None, again.error
    assert fake.requests[-1].json == want["second_body"]


async def test_gemini_signature_goes_back_unchanged_on_the_first_parallel_call_only(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    transcript = transcripts.load("gemini_parallel_tools")
    signature = json.loads(transcript.body.split(b"\r\n\r\n")[2][6:])["candidates"][0]["content"]["parts"][0][
        "thoughtSignature"
    ]
    ep = endpoint(fake, "google")
    first = conversations.build("tools_first", "google", transcript.params)
    fake.enqueue(Scenario.transcript("gemini_parallel_tools"))
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, first, 10))
    assert out.finished is not None
    fake.enqueue(Scenario.transcript("gemini_basic"))
    await collect(
        adapter_for(ep.spec).stream_chat(
            http, ep, conversations.second_turn(first, out.text, out.finished), 10
        )
    )

    model_turn = fake.requests[-1].json["contents"][1]
    calls = [p for p in model_turn["parts"] if "functionCall" in p]
    assert [p.get("thoughtSignature") for p in calls] == [signature, None]
    # the ids Gemini never sent map back to names in the functionResponse parts
    responses = fake.requests[-1].json["contents"][2]["parts"]
    assert [r["functionResponse"]["name"] for r in responses] == ["get_weather", "get_weather"]


async def test_foreign_provider_state_is_ignored_and_garbage_refused(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """State from another wire format (a conversation moved provider) is not sent; bytes we
    never wrote are an INVALID_ARGUMENT naming the message."""
    from rmllm_common.errors import InvalidRequest

    anthropic_state = transcripts.load("anthropic_parallel_tools").expect["provider_state"].encode()
    ep = endpoint(fake, "google")
    params = conversations.build("tools_first", "google")
    moved = params.__class__(
        model=params.model,
        messages=(*params.messages, Message("assistant", "ok", provider_state=anthropic_state)),
    )
    fake.enqueue(Scenario.transcript("gemini_basic"))
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, moved, 10))
    assert out.error is None
    assert fake.requests[-1].json["contents"][-1] == {"role": "model", "parts": [{"text": "ok"}]}

    garbage = params.__class__(
        model=params.model,
        messages=(*params.messages, Message("assistant", "ok", provider_state=b"\x00junk")),
    )
    sent = len(fake.requests)
    refused = await collect(adapter_for(ep.spec).stream_chat(http, ep, garbage, 10))
    assert isinstance(refused.error, InvalidRequest)
    assert refused.error.violations[0].field == "messages[2].provider_state"
    assert len(fake.requests) == sent  # refused before any request


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=st.sampled_from(TOOL_TRANSCRIPTS), sizes=st.lists(st.integers(1, 97), min_size=1, max_size=40))
async def test_assembled_arguments_are_the_same_in_every_split(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str, sizes: list[int]
) -> None:
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider, path=transcript.base_path)
    fake.enqueue(Scenario.transcript(name, chunks=tuple(sizes)))
    params = conversations.build(transcript.request, transcript.provider, transcript.params)

    out = await collect(adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, params, 10))

    assert out.error is None, out.error
    assert out.finished is not None
    want = [tuple(c) for c in transcript.expect["tool_calls"]]
    assert [(c.id, c.name, c.arguments) for c in out.finished.tool_calls] == want
    assert out.assembled() == want
    assert [json.loads(a) for _, _, a in want] == conversations.arguments_of(out.finished)
