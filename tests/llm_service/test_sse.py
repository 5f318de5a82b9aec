"""The SSE decoder: the same bytes in any split give the same events (house rule 5)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from fakes import transcripts
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_service.sse import SSEDecoder, SSEEvent


def feed_all(chunks: list[bytes]) -> tuple[list[SSEEvent], bool]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events, decoder.flush()


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, 40)
        out.append(data[pos : pos + size])
        pos += size
    return out


# --- generated streams -------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=30)
_event = st.fixed_dictionaries(
    {
        "event": st.none() | st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
        "data": st.lists(_text, min_size=1, max_size=4),
        "id": st.none() | st.text(alphabet="0123456789abcdef-", max_size=10),
        "retry": st.none() | st.integers(min_value=0, max_value=100_000),
        "comment": st.none() | _text,
    }
)


def encode(events: list[dict[str, object]], eol: bytes) -> tuple[bytes, list[SSEEvent]]:
    """The wire bytes for ``events`` and the events a correct decoder must give."""
    out: list[bytes] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for e in events:
        lines: list[str] = []
        if e["comment"] is not None:
            lines.append(f":{e['comment']}")
        if e["event"] is not None:
            lines.append(f"event: {e['event']}")
        if e["id"] is not None:
            lines.append(f"id: {e['id']}")
            last_id = str(e["id"])
        if e["retry"] is not None:
            lines.append(f"retry: {e['retry']}")
        data = [str(d) for d in e["data"]]  # type: ignore[attr-defined]
        lines.extend(f"data: {d}" for d in data)
        out.append(b"".join(line.encode() + eol for line in lines) + eol)
        expected.append(
            SSEEvent(
                data="\n".join(data),
                event=e["event"],  # type: ignore[arg-type]
                id=last_id,
                retry=e["retry"],  # type: ignore[arg-type]
            )
        )
    return b"".join(out), expected


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(_event, max_size=8),
    eol=st.sampled_from([b"\n", b"\r", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_generated_streams_decode_the_same_in_every_split(
    events: list[dict[str, object]], eol: bytes, cuts: list[int]
) -> None:
    data, expected = encode(events, eol)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    random_split = [data[a:b] for a, b in itertools.pairwise(points)]
    bytewise = [data[i : i + 1] for i in range(len(data))]
    for chunks in ([data], bytewise, random_split):
        assert feed_all(chunks) == (expected, False)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(transcripts.names(body_format="sse")), seed=st.integers(min_value=0, max_value=2**32)
)
def test_recorded_transcripts_decode_the_same_in_every_split(name: str, seed: int) -> None:
    body = transcripts.load(name).body
    assert feed_all([body])[0], "a transcript with no events"
    assert split_differences(body, seed, feed_all) == []


def split_differences(body: bytes, seed: int, feed: Callable[[list[bytes]], object]) -> list[str]:
    """The splits of ``body`` (byte by byte, random pieces) whose result differs from the whole's."""
    whole = feed([body])
    rng = random.Random(seed)  # noqa: S311 - reproducible splits, not crypto
    pieces = {"bytewise": [body[i : i + 1] for i in range(len(body))], "random": splits(body, rng)}
    return [name for name, chunks in pieces.items() if feed(chunks) != whole]


def test_the_split_check_catches_a_decoder_that_loses_state_between_reads() -> None:
    def forgetful(chunks: list[bytes]) -> tuple[list[SSEEvent], bool]:
        # A fresh decoder per read: what a decoder that drops partial lines would give.
        events: list[SSEEvent] = []
        for chunk in chunks:
            events.extend(SSEDecoder().feed(chunk))
        return events, False

    body = transcripts.load("openai_basic").body
    assert split_differences(body, 7, forgetful) == ["bytewise", "random"]
    assert split_differences(body, 7, feed_all) == []


# --- the traps, one by one ----------------------------------------------------------


def test_crlf_split_across_two_feeds_is_one_line_end() -> None:
    assert feed_all([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == (
        [SSEEvent("a"), SSEEvent("b")],
        False,
    )


def test_a_lone_cr_at_the_end_of_a_feed_then_more_text() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SSEEvent("a")]  # CR CR: the second CR is the empty line
    assert decoder.feed(b"data: b\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("b")]


def test_mixed_line_ends_in_one_stream() -> None:
    assert feed_all([b"event: x\rdata: 1\ndata: 2\r\n\ndata: 3\r\r"])[0] == [
        SSEEvent("1\n2", event="x"),
        SSEEvent("3"),
    ]


def test_utf8_character_split_across_reads_survives() -> None:
    raw = "data: 你好 👋 café\n\n".encode()
    for cut in range(len(raw)):
        assert feed_all([raw[:cut], raw[cut:]])[0] == [SSEEvent("你好 👋 café")]


def test_comments_are_skipped_even_between_data_lines() -> None:
    body = b": OPENROUTER PROCESSING\n\ndata: a\n: keep-alive\ndata: b\n\n:\n\n"
    assert feed_all([body])[0] == [SSEEvent("a\nb")]


def test_field_parsing_details() -> None:
    body = (
        b"\xef\xbb\xbfdata:no space\n\n"  # BOM dropped; no space after the colon
        b"data:  two spaces\n\n"  # only one space is removed
        b"data\n\n"  # a field name alone: empty value
        b"retry: soon\ndata: x\n\n"  # a non-numeric retry is ignored
        b"id: a\x00b\ndata: y\n\n"  # an id with NUL is ignored
        b"unknown: z\ndata: w\n\n"
    )
    assert feed_all([body])[0] == [
        SSEEvent("no space"),
        SSEEvent(" two spaces"),
        SSEEvent(""),
        SSEEvent("x"),
        SSEEvent("y"),
        SSEEvent("w"),
    ]


def test_data_done_inside_a_json_string_is_just_data() -> None:
    body = b'data: {"content":"data: [DONE]\\n\\ndata: [DONE]"}\n\ndata: [DONE]\n\n'
    events = feed_all([body])[0]
    assert [e.data for e in events] == ['{"content":"data: [DONE]\\n\\ndata: [DONE]"}', "[DONE]"]


def test_flush_reports_an_event_cut_short_and_discards_it() -> None:
    assert feed_all([b'data: a\n\ndata: {"par']) == ([SSEEvent("a")], True)
    assert feed_all([b"data: a\n\ndata: b\n"]) == ([SSEEvent("a")], True)
    assert feed_all([b"data: a\n\n"]) == ([SSEEvent("a")], False)
    decoder = SSEDecoder()
    decoder.feed(b"data: cut")
    assert decoder.flush() is True
    assert decoder.feed(b"data: fresh\n\n") == [SSEEvent("fresh")]


def test_empty_feeds_change_nothing() -> None:
    assert feed_all([b"", b"data: a", b"", b"\r", b"", b"\n\n", b""])[0] == [SSEEvent("a")]
