"""Fuzz tests (hypothesis): arbitrary bytes into the SSE decoder, the three adapters'
event parsing, the upstream error table and the request validators; out comes either
a result or a clear domain error, never anything else (no KeyError, RecursionError,
UnicodeError... reaching the caller as UNKNOWN or INTERNAL).

The adapters are fuzzed end to end over HTTP: each example is served as the body of
a real loopback answer and parsed by the real adapter, so nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import grpc
import pytest
from aiohttp import web
from fakes.harness import KEYS, Collected, collect, params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Endpoint
from llm_service.adapters.errors import from_response, from_stream_error, redact
from llm_service.http import KIB, UpstreamLimits, new_http_session
from llm_service.netpolicy import EndpointPolicy
from llm_service.sse import SSEDecoder, SSELimitExceeded
from llm_service.validation import check_api_key, check_base_url, validate_chat
from rmllm_common import urls
from rmllm_common.errors import FieldViolation, InvalidRequest, RmllmError
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret
from rmllm_common.server import UNDECODABLE, _tolerant
from vault_service import validation as vault_validation

REGISTRY = default_registry()
FORMATS = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}

# --- the SSE decoder -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4000), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_sse_decoder_takes_any_bytes_in_any_split(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole, split = SSEDecoder(), SSEDecoder()
    events = whole.feed(data)
    split_events = [e for piece in pieces for e in split.feed(piece)]
    assert events == split_events
    assert whole.flush() == split.flush()
    for event in events:
        assert isinstance(event.data, str)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), limit=st.integers(min_value=1, max_value=200))
def test_sse_decoder_limits_hold_for_any_bytes(data: bytes, limit: int) -> None:
    decoder = SSEDecoder(max_line=limit, max_event=limit)
    try:
        for i in range(0, len(data), 7):
            for event in decoder.feed(data[i : i + 7]):
                assert len(event.data) <= limit
    except SSELimitExceeded as e:
        assert "longer than" in str(e) or "larger than" in str(e)


@pytest.mark.timeout(60)
def test_a_line_without_end_is_buffered_in_linear_time() -> None:
    """64 MiB of one line in 1 KiB reads: the old decoder copied and rescanned the whole
    buffer on every read (about 2 TiB of copying here) and never finished in time."""
    decoder = SSEDecoder()
    piece = b"x" * 1024
    decoder.feed(b"data: ")
    for _ in range(64 * 1024):
        assert decoder.feed(piece) == []
    [event] = decoder.feed(b"\n\n")
    assert len(event.data) == 64 * 1024 * 1024


# --- the adapters' event parsing, over real HTTP ----------------------------------------

_json_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_KEYS = st.sampled_from(
    [
        "choices", "delta", "content", "finish_reason", "usage", "index", "error", "type", "message",
        "content_block", "text", "stop_reason", "candidates", "parts", "usageMetadata", "finishReason",
        "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "id", "model", "code",
    ]
)  # fmt: skip
_json = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_event_names = st.sampled_from(
    ["message_start", "content_block_delta", "message_delta", "message_stop", "error", "ping", "x"]
)


@st.composite
def sse_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed event streams with arbitrary JSON, sometimes raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=600))
    out = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.none() | _event_names)
        data = draw(st.sampled_from(["[DONE]", ""]) | _json.map(json.dumps))
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


async def _serve_and_chat(provider: str, status: int, body: bytes, content_type: str) -> Collected:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    limits = UpstreamLimits(max_call_seconds=10, max_event_bytes=64 * KIB, max_error_bytes=4 * KIB)
    try:
        async with new_http_session(2, policy=EndpointPolicy.parse("127.0.0.0/8"), limits=limits) as http:
            spec = REGISTRY.providers[provider]
            endpoint = Endpoint(spec, f"http://127.0.0.1:{port}/v1", Secret(KEYS[provider]))
            return await collect(adapter_for(spec).stream_chat(http, endpoint, params(provider), 10))
    finally:
        await runner.cleanup()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    provider=st.sampled_from(sorted(FORMATS)),
    body=sse_bodies(),
    status=st.sampled_from([200, 200, 200, 301, 400, 401, 404, 429, 500, 529]),
    content_type=st.sampled_from(["text/event-stream", "application/json", "text/plain"]),
)
def test_adapters_turn_any_answer_into_events_or_a_domain_error(
    provider: str, body: bytes, status: int, content_type: str
) -> None:
    out = asyncio.run(_serve_and_chat(provider, status, body, content_type))
    assert out.finished is not None or out.error is not None
    if out.error is not None:
        assert out.error.provider == provider
        assert KEYS[provider][5:] not in out.error.message


@settings(max_examples=300, deadline=None)
@given(
    provider=st.sampled_from(sorted(FORMATS)),
    status=st.integers(min_value=300, max_value=599),
    body=st.binary(max_size=500) | _json.map(lambda v: json.dumps(v).encode()),
    payload=_json,
)
def test_the_error_table_classifies_anything(provider: str, status: int, body: bytes, payload: Any) -> None:
    spec = REGISTRY.providers[provider]
    key = KEYS[provider]
    for error in (from_response(spec, status, {}, body, key), from_stream_error(spec, payload, key)):
        assert isinstance(error, RmllmError)
        assert error.provider == provider
        assert len(error.message) < 800


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400), secret=st.text(max_size=60))
def test_redaction_never_leaves_a_run_of_eight_key_characters(text: str, secret: str) -> None:
    out = redact(text + secret[2:] + text, secret)
    if len(secret) >= 8:
        assert not any(secret[i : i + 8] in out for i in range(len(secret) - 7))
    assert len(out) <= 300


# --- request validators ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_request_bytes_decode_to_a_message_or_malformed(data: bytes) -> None:
    for message in (llm_pb2.ChatRequest, llm_pb2.StreamChatRequest):
        decoded = _tolerant(message.FromString)(data)  # type: ignore[misc]
        if decoded is UNDECODABLE:
            continue
        try:
            validate_chat(decoded, REGISTRY)
        except InvalidRequest as e:  # UnknownProvider is one
            assert e.code is grpc.StatusCode.INVALID_ARGUMENT
            assert e.violations


_proto_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


@settings(max_examples=300, deadline=None)
@given(
    provider=st.sampled_from([*REGISTRY.names(), "", "nope"]) | _proto_text,
    model=_proto_text,
    messages=st.lists(st.tuples(st.integers(-3, 8), _proto_text), max_size=5),
    temperature=st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32),
    max_tokens=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    top_p=st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32),
    stop=st.lists(_proto_text, max_size=6),
)
def test_chat_validation_accepts_or_names_the_field(
    *,
    provider: str,
    model: str,
    messages: list[tuple[int, str]],
    temperature: float | None,
    max_tokens: int | None,
    top_p: float | None,
    stop: list[str],
) -> None:
    request = llm_pb2.ChatRequest(
        provider=provider,
        model=model,
        messages=[llm_pb2.ChatMessage(role=r, content=c) for r, c in messages],  # type: ignore[arg-type]
        stop=stop,
    )
    if temperature is not None:
        request.temperature = temperature
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if top_p is not None:
        request.top_p = top_p
    try:
        validate_chat(request, REGISTRY)
    except InvalidRequest as e:
        assert e.code is grpc.StatusCode.INVALID_ARGUMENT
        assert e.violations and all(v.field for v in e.violations)


@settings(max_examples=400, deadline=None)
@given(
    url=st.text(max_size=120)
    | st.from_regex(r"https?://[a-z0-9.:\[\]@?#%-]{0,30}(/[ -~]{0,20})?", fullmatch=True)
)
def test_base_url_validators_agree_on_anything(url: str) -> None:
    llama = REGISTRY.providers["llama"]
    try:
        normalised = urls.check_base_url(url)
    except urls.BaseUrlError:
        normalised = None
    bad: list[FieldViolation] = []
    assert (check_base_url(url, llama, True, bad) or None) == (normalised or None)
    try:
        from_vault = vault_validation.base_url(url, llama, allow_custom=True) or None
    except InvalidRequest:
        from_vault = None
    assert from_vault == (normalised or None)
    if normalised is not None:
        assert "?" not in normalised and "#" not in normalised and "@" not in normalised.split("/")[2]


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=100), provider=st.sampled_from(sorted(REGISTRY.providers)))
def test_key_validators_accept_or_refuse_cleanly(key: str, provider: str) -> None:
    bad: list[FieldViolation] = []
    check_api_key(key, bad)
    secret = len(key) >= 8  # a shorter "key" may well be a word of the description
    assert not secret or all(key not in v.description for v in bad)
    try:
        vault_validation.api_key(key, REGISTRY.providers[provider])
    except InvalidRequest as e:
        assert not secret or key not in e.message
