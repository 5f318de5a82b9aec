"""The NDJSON decoder: the same bytes in any split give the same lines (house rule 5)."""

from __future__ import annotations

import itertools
import json

import pytest
from fakes import transcripts
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_service.ndjson import NDJSONDecoder
from llm_service.sse import SSEEvent, SSELimitExceeded

NATIVE = transcripts.names(body_format="ndjson")


def feed_all(chunks: list[bytes], **limits: int) -> tuple[list[SSEEvent], bool]:
    """Every event of ``chunks`` fed in order, with the end's, and whether the end cut a line."""
    decoder = NDJSONDecoder(**limits)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.end())
    return events, decoder.flush()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_objects = st.dictionaries(st.text(max_size=8), _values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    objects=st.lists(_objects, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    crlf=st.booleans(),
    final_lf=st.booleans(),
)
def test_any_split_gives_the_same_lines(
    objects: list[dict[str, object]], cuts: list[int], crlf: bool, final_lf: bool
) -> None:
    """Generated lines (non-ASCII text, CRLF or LF, with or without a last LF) in any split."""
    eol = b"\r\n" if crlf else b"\n"
    lines = [json.dumps(o, ensure_ascii=False).encode() for o in objects]
    data = eol.join(lines) + (eol if final_lf and lines else b"")
    expected = [SSEEvent(line.decode()) for line in lines]

    whole = feed_all([data])
    assert whole == (expected, False)
    assert feed_all(split_at(data, cuts)) == whole
    assert feed_all([bytes([b]) for b in data]) == whole


@pytest.mark.parametrize("name", NATIVE)
@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=60))
def test_recorded_transcripts_in_any_split(name: str, cuts: list[int]) -> None:
    body = transcripts.load(name).body
    whole = feed_all([body])
    assert whole[0] == [SSEEvent(line.decode()) for line in body.splitlines()]
    assert feed_all(split_at(body, cuts)) == whole


def test_a_multibyte_character_split_across_reads_survives() -> None:
    data = '{"content":"São Paulo, 東京"}\n'.encode()
    cut = data.index("東".encode()) + 1
    assert feed_all([data[:cut], data[cut:]]) == ([SSEEvent('{"content":"São Paulo, 東京"}')], False)


def test_blank_lines_and_a_leading_bom_are_skipped() -> None:
    events, cut = feed_all([b"\xef\xbb", b'\xbf{"a":1}\n\n  \r\n{"b":2}\n'])
    assert [e.data for e in events] == ['{"a":1}', '{"b":2}'] and not cut


def test_a_last_line_without_its_lf_counts_only_when_whole() -> None:
    """As Go's bufio.Scanner (Ollama's own client) reads it; a line cut mid-value is a cut."""
    assert feed_all([b'{"a":1}\n{"done":true}']) == ([SSEEvent('{"a":1}'), SSEEvent('{"done":true}')], False)
    assert feed_all([b'{"a":1}\n{"done":tr']) == ([SSEEvent('{"a":1}')], True)


def test_a_line_past_the_limit_is_refused_and_dropped() -> None:
    decoder = NDJSONDecoder(max_line=16)
    assert decoder.feed(b'{"short":1}\n') == [SSEEvent('{"short":1}')]
    decoder.feed(b'{"long":"' + b"x" * 6)
    with pytest.raises(SSELimitExceeded, match="longer than 16 bytes"):
        decoder.feed(b"x" * 8)
    assert not decoder.flush()  # what it held went at once
    with pytest.raises(SSELimitExceeded):
        NDJSONDecoder(max_line=16).feed(b"y" * 40 + b"\n")
