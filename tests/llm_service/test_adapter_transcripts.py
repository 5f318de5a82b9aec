"""Every recorded transcript, through the real adapter and the fake, in every split.

Each transcript is replayed whole, byte by byte (one HTTP chunk per byte) and in
three seeded random splits; the adapter must deliver exactly the transcript's
text, finish reason, usage, model and id (or its error after its text) each time.
"""

from __future__ import annotations

import random

import aiohttp
import pytest
from fakes import FakeProvider, Scenario, transcripts
from fakes.harness import PROVIDERS, collect, endpoint, params

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


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("name", transcripts.names())
async def test_transcript_gives_its_result_in_every_split(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str, split: str
) -> None:
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider)
    fake.enqueue(Scenario.transcript(name, chunks=SPLITS[split]))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(transcript.provider), 10))

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
    assert out.finished.usage == Usage(*expect["usage"])
    assert out.finished.model == expect["model"]
    assert out.finished.response_id == expect["response_id"]


@pytest.mark.parametrize("name", [n for n in transcripts.names() if not transcripts.load(n).expect_error])
@pytest.mark.parametrize("how", ["end_at", "truncate_at"])
async def test_a_stream_cut_before_its_end_is_truncated_never_a_success(
    fake: FakeProvider, http: aiohttp.ClientSession, name: str, how: str
) -> None:
    """``end_at``: the body ends cleanly without the end; ``truncate_at``: the connection drops."""
    transcript = transcripts.load(name)
    ep = endpoint(fake, transcript.provider)
    cut = transcript.end_offset(ep.spec.wire_format)
    fake.enqueue(Scenario.transcript(name, chunks=(7,), **{how: cut}))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(transcript.provider), 10))

    assert out.finished is None
    assert isinstance(out.error, errors.UpstreamStreamTruncated), out.error
    assert out.error.reason == "UPSTREAM_STREAM_TRUNCATED"
    assert out.error.provider == transcript.provider
    assert transcript.expect["text"].startswith(out.text)
