"""Every recorded transcript, through the real adapter and the fake, in every split.

Each transcript is replayed whole, byte by byte (one HTTP chunk per byte) and in
three seeded random splits; the adapter must deliver exactly the transcript's
text, finish reason, usage (OpenTelemetry semantics: cached tokens inside input,
reasoning inside output), model and id, and where the transcript says so its
tool calls (each call's deltas concatenating to exactly its arguments), reasoning,
provider state and price (or its error after its text) each time. A transcript
with a ``request`` is sent its named conversation (``fakes.conversations``), one
with only ``params`` the small default chat with those changes; one with a
``base_path`` is called there (Ollama's native transcripts: the bare origin or
``/api``, where the adapter for the base URL is the native one).
"""

from __future__ import annotations

import random

import aiohttp
import pytest
from fakes import FakeProvider, Scenario, transcripts
from fakes.harness import PROVIDERS, collect, endpoint, transcript_params

from llm_service.adapters import adapter_for
from llm_service.adapters.base import FinishReason, Usage
from rmllm_common import errors

SPLITS: dict[str, tuple[int, ...]] = {
    "whole": (),
    "bytewise": (1,),
    **{f"random{seed}": tuple(random.Random(seed).randint(1, 48) for _ in range(64)) for seed in (1, 2, 3)},  # noqa: S311
}


def test_every_registry_provider_has_a_transcript() -> None:
    assert {transcripts.load(n).provider for n in transcripts.names()} == set(PROVIDERS)


def expected_usage(raw: list[int] | dict[str, int | bool]) -> Usage:
    return Usage(*raw) if isinstance(raw, list) else Usage(**raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("name", transcripts.names())
async def test_transcript_gives_its_result_in_every_split(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str, split: str
) -> None:
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider, path=transcript.base_path)
    fake.enqueue(Scenario.transcript(name, chunks=SPLITS[split]))
    sent = transcript_params(transcript)

    out = await collect(adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, sent, 10))

    if transcript.expect_error:
        assert out.finished is None
        assert type(out.error).__name__ == transcript.expect_error["class"]
        assert out.text == transcript.expect_error["text_before"]
        assert out.error is not None and out.error.provider == transcript.provider
        return
    assert out.error is None, out.error
    expect = transcript.expect
    assert out.text == expect["text"]
    assert out.finished is not None
    assert out.finished.finish_reason is FinishReason[expect["finish_reason"]]
    assert out.finished.usage == expected_usage(expect["usage"])
    assert out.finished.model == expect["model"]
    assert out.finished.response_id == expect["response_id"]
    calls = [(c.id, c.name, c.arguments) for c in out.finished.tool_calls]
    assert calls == [tuple(c) for c in expect.get("tool_calls", [])]
    assert out.assembled() == calls  # the deltas concatenate to exactly the assembled calls
    assert out.finished.reasoning == expect.get("reasoning", "") == "".join(out.reasoning)
    if "provider_state" in expect:
        assert out.finished.provider_state == expect["provider_state"].encode()
    if "cost_usd" in expect:
        spec = ep.spec
        priced = out.finished.model if spec.model(out.finished.model) else sent.model
        usage = out.finished.usage
        cost = spec.cost(
            priced,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
        )
        assert cost == pytest.approx(expect["cost_usd"], abs=1e-12)


@pytest.mark.parametrize("name", [n for n in transcripts.names() if not transcripts.load(n).expect_error])
@pytest.mark.parametrize("how", ["end_at", "truncate_at"])
async def test_a_stream_cut_before_its_end_is_truncated_never_a_success(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str, how: str
) -> None:
    """``end_at``: the body ends cleanly without the end; ``truncate_at``: the connection drops."""
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider, path=transcript.base_path)
    cut = transcript.end_offset(ep.spec.wire_format_at(ep.base_url))
    fake.enqueue(Scenario.transcript(name, chunks=(7,), **{how: cut}))

    out = await collect(
        adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, transcript_params(transcript), 10)
    )

    assert out.finished is None
    assert isinstance(out.error, errors.UpstreamStreamTruncated), out.error
    assert out.error.reason == "UPSTREAM_STREAM_TRUNCATED"
    assert out.error.provider == transcript.provider
    assert transcript.expect["text"].startswith(out.text)
