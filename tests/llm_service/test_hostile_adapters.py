"""The adapters against the hostile provider (tests/fakes/hostile.py): every misbehaviour
ends in a clear domain error, the upstream connection closed, nothing buffered without end.

Each test runs the real adapter with the service's own session (``new_http_session``:
network policy, limits, timeouts), its limits set small so a test takes a moment.
Every call is wrapped in a generous ``asyncio.timeout``: before these limits
existed, the endless behaviours never ended at all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from fakes.harness import KEYS, Collected, collect, params
from fakes.hostile import HostileProvider

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Endpoint, ProbeOutcome
from llm_service.adapters.errors import redact
from llm_service.http import KIB, UpstreamLimits, new_http_session
from llm_service.netpolicy import EndpointPolicy
from rmllm_common import errors
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret

LIMITS = UpstreamLimits(
    connect_timeout_seconds=5.0,
    read_idle_timeout_seconds=0.5,
    max_call_seconds=3.0,
    max_response_bytes=512 * KIB,
    max_events=20_000,
    max_event_bytes=64 * KIB,
    max_error_bytes=4 * KIB,
    max_json_bytes=64 * KIB,
)
LOOPBACK = EndpointPolicy.parse("127.0.0.0/8")
GUARD = 30.0  # seconds: generous; the old code never ended these calls at all


@pytest.fixture
async def hostile() -> AsyncIterator[HostileProvider]:
    async with HostileProvider(slow_interval=0.01) as server:
        yield server


@pytest.fixture
async def bounded() -> AsyncIterator[aiohttp.ClientSession]:
    session = new_http_session(64, policy=LOOPBACK, limits=LIMITS)
    yield session
    await session.close()


def endpoint(base_url: str, provider: str = "openai") -> Endpoint:
    spec = default_registry().providers[provider]
    return Endpoint(spec, base_url, Secret(KEYS[provider]))


async def chat(
    http: aiohttp.ClientSession, base_url: str, provider: str = "openai", timeout: float | None = None
) -> Collected:
    spec = default_registry().providers[provider]
    async with asyncio.timeout(GUARD):
        return await collect(
            adapter_for(spec).stream_chat(http, endpoint(base_url, provider), params(provider), timeout)
        )


@pytest.mark.parametrize(
    ("behaviour", "limit"),
    [
        ("deltas-fast", "bytes"),
        ("comments", "bytes"),
        ("one-line", "a line longer than"),
        ("gzip-bomb", "bytes"),  # counted after decompression
    ],
)
async def test_endless_answers_end_at_a_limit_and_close_the_connection(
    hostile: HostileProvider, bounded: aiohttp.ClientSession, behaviour: str, limit: str
) -> None:
    out = await chat(bounded, hostile.base_url(behaviour))
    assert isinstance(out.error, errors.UpstreamResponseTooLarge), out.error
    assert out.error.reason == "UPSTREAM_RESPONSE_TOO_LARGE"
    assert out.error.provider == "openai"
    assert limit in out.error.message and "connection was closed" in out.error.message
    await hostile.wait_idle()  # the server saw the connection go


async def test_the_event_count_is_bounded(hostile: HostileProvider) -> None:
    limits = UpstreamLimits(max_events=50, max_call_seconds=30.0)
    async with new_http_session(8, policy=LOOPBACK, limits=limits) as http:
        out = await chat(http, hostile.base_url("deltas-fast"))
    assert isinstance(out.error, errors.UpstreamResponseTooLarge), out.error
    assert "more than 50 events" in out.error.message
    assert len(out.deltas) <= 50
    await hostile.wait_idle()


async def test_slow_deltas_without_end_stop_at_the_call_bound_without_a_caller_deadline(
    hostile: HostileProvider, bounded: aiohttp.ClientSession
) -> None:
    out = await chat(bounded, hostile.base_url("deltas-slow"), timeout=None)
    assert isinstance(out.error, errors.DeadlineExceeded), out.error
    assert "maximum call duration" in out.error.message
    assert out.deltas  # the answer was flowing; only the bound stopped it
    await hostile.wait_idle()


async def test_a_stall_after_the_headers_ends_at_the_read_idle_bound(
    hostile: HostileProvider, bounded: aiohttp.ClientSession
) -> None:
    out = await chat(bounded, hostile.base_url("stall"), timeout=None)
    assert isinstance(out.error, errors.UpstreamStreamTruncated), out.error
    assert "read-idle" in out.error.message


async def test_a_provider_that_never_answers_ends_at_the_read_idle_bound(
    hostile: HostileProvider, bounded: aiohttp.ClientSession
) -> None:
    out = await chat(bounded, hostile.base_url("silent"), timeout=None)
    assert isinstance(out.error, errors.ProviderUnavailable), out.error


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_a_huge_error_body_is_read_only_a_few_kb(
    hostile: HostileProvider, bounded: aiohttp.ClientSession, provider: str
) -> None:
    out = await chat(bounded, hostile.base_url("huge-error"), provider)
    assert isinstance(out.error, errors.ProviderUnavailable), out.error
    assert len(out.error.message) < 600
    await hostile.wait_idle()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_deeply_nested_json_is_a_provider_error(
    hostile: HostileProvider, bounded: aiohttp.ClientSession, provider: str
) -> None:
    out = await chat(bounded, hostile.base_url("nested-json"), provider)
    assert type(out.error) is errors.ProviderError, out.error
    assert out.error.reason == "PROVIDER_ERROR"


async def test_a_deeply_nested_error_body_is_classified_without_recursion(
    hostile: HostileProvider, bounded: aiohttp.ClientSession
) -> None:
    out = await chat(bounded, hostile.base_url("nested-error"))
    assert isinstance(out.error, errors.InvalidRequest), out.error


async def test_a_deeply_nested_listing_is_a_provider_error(
    hostile: HostileProvider, bounded: aiohttp.ClientSession
) -> None:
    spec = default_registry().providers["openai"]
    with pytest.raises(errors.ProviderError):
        async with asyncio.timeout(GUARD):
            await adapter_for(spec).list_models(bounded, endpoint(hostile.base_url("nested-json")), None)


class Catcher:
    """The origin a redirect points at: it records what arrives (nothing must)."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"error": {"message": "caught"}}, status=418)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_a_redirect_to_another_origin_is_not_followed(
    hostile: HostileProvider, bounded: aiohttp.ClientSession, provider: str
) -> None:
    catcher = Catcher()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", catcher.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.redirect_to = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        out = await chat(bounded, hostile.base_url("redirect"), provider)
        spec = default_registry().providers[provider]
        probe = await adapter_for(spec).probe_key(
            bounded, endpoint(hostile.base_url("redirect"), provider), 10
        )
    finally:
        await runner.cleanup()
    assert type(out.error) is errors.ProviderError, out.error
    assert "redirect (HTTP 307)" in out.error.message
    assert probe.outcome is ProbeOutcome.UNKNOWN
    assert catcher.headers == []  # the key never travelled to the other origin


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_a_key_echoed_without_its_prefix_is_redacted(
    hostile: HostileProvider, bounded: aiohttp.ClientSession, provider: str
) -> None:
    key = KEYS[provider]
    out = await chat(bounded, hostile.base_url("echo-key"), provider)
    assert isinstance(out.error, errors.ProviderKeyInvalid), out.error
    assert hostile.requests[-1].api_key == key
    message = out.error.message
    assert "[redacted]" in message
    assert not any(key[i : i + 8] in message for i in range(len(key) - 7)), message


def test_redaction_catches_any_run_of_eight_key_characters() -> None:
    key = "sk-proj-T3stK3yAbCdEfGhIjKlMnOpQr"
    for start in range(len(key) - 8):
        for end in range(start + 8, len(key) + 1):
            text = f"the key {key[start:end]} is wrong"
            assert key[start:end] not in redact(text, key)
    assert redact("a shorter run T3stK3y is kept", key) == "a shorter run T3stK3y is kept"
    assert redact("line\nbreaks\x00and\tcontrol", "") == "line breaks and control"
    assert len(redact("x" * 100_000, key)) <= 300


@pytest.mark.parametrize("where", ["closed", "accepts-and-closes", "not-http", "policy"])
async def test_connection_failures_read_the_same_whatever_the_port_state(where: str) -> None:
    """A closed port, an open one that hangs up, one that speaks no HTTP and a refused
    address must be indistinguishable: same class, same text."""
    server: asyncio.Server | None = None

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if where == "not-http":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            await writer.drain()
            await reader.read(1)
        writer.close()

    if where == "closed":
        probe = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
    else:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    policy = EndpointPolicy.parse("none" if where == "policy" else "127.0.0.0/8")
    try:
        async with new_http_session(4, policy=policy, limits=LIMITS) as http:
            out = await chat(http, f"http://127.0.0.1:{port}/v1")
    finally:
        if server is not None:
            server.close()
    assert type(out.error) is errors.ProviderUnavailable, out.error
    text = re.sub(r"\d+", "N", out.error.message)
    assert text == (
        "cannot reach OpenAI at the configured endpoint: the connection failed, timed out, "
        "was refused by this server's outbound network policy, or did not answer HTTP"
    )


async def test_a_listing_without_end_is_bounded_in_pages_and_models(bounded: aiohttp.ClientSession) -> None:
    pages: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        pages.append(request.query.get("pageToken", ""))
        models = [{"name": f"models/m-{len(pages)}-{i}"} for i in range(1000)]
        return web.json_response({"models": models, "nextPageToken": f"p{len(pages)}"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", listing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    spec = default_registry().providers["google"]
    ep = Endpoint(spec, f"http://127.0.0.1:{runner.addresses[0][1]}/v1beta", Secret(KEYS["google"]))
    try:
        with pytest.raises(errors.UpstreamResponseTooLarge) as caught:
            async with asyncio.timeout(GUARD):
                await adapter_for(spec).list_models(bounded, ep, None)
    finally:
        await runner.cleanup()
    assert "more than 10000 models" in caught.value.message
    assert len(pages) == 11
