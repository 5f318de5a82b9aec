"""The process's one ``aiohttp.ClientSession`` towards providers, and its bounds.

Created once when the server is built and closed when it stops, so connections
(and TLS sessions) are reused across requests: a keep-alive ``TCPConnector`` with a
bounded pool, DNS answers cached for a few minutes, no proxy settings taken from
the environment (``trust_env=False``: a stray ``HTTPS_PROXY`` must not capture
keys), no cookie jar (the session is shared by every user), and every socket
checked against the outbound network policy (``llm_service.netpolicy``) after DNS
resolution, as it connects. Responses are decompressed incrementally by aiohttp
(a bounded piece per read), which suits streamed bodies; the limits below count
the decompressed bytes, so a small compressed body cannot get round them.

``UpstreamLimits`` are the server-side bounds of one provider exchange, whatever
the caller's deadline: connect time, the longest silence between bytes, the whole
call's duration, and the bytes, events and line lengths read from a provider.
They ride with the session (``limits_of(session)``), so the adapters, which are
given a session and never read settings, apply them; a session made elsewhere
(tests) gets the defaults. ``request_timeout`` builds the per-request
``aiohttp.ClientTimeout``: it must carry every bound, because a per-request
timeout replaces the session's instead of merging with it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import aiohttp

from llm_service.netpolicy import EndpointPolicy

KEEPALIVE_SECONDS = 30.0
DNS_CACHE_SECONDS = 300
KIB = 1024
MIB = 1024 * 1024
_TIMER_ROUNDING = 2.0  # aiohttp rounds a timeout of 5 s or more up to a whole second: a margin for it


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """Bounds of one provider exchange (the settings ``RMLLM_UPSTREAM_*``)."""

    connect_timeout_seconds: float = 10.0
    read_idle_timeout_seconds: float = 120.0  # the longest gap between two reads of the body
    max_call_seconds: float = 900.0  # one HTTP exchange, first byte sent to last byte read
    max_response_bytes: int = 64 * MIB  # one streamed answer, after decompression
    max_events: int = 500_000  # events of one streamed answer
    max_event_bytes: int = 1 * MIB  # one SSE line, and one event's data
    max_error_bytes: int = 8 * KIB  # read of an error body; the rest is never read
    max_json_bytes: int = 8 * MIB  # a JSON answer (probe, model listing)


DEFAULT_LIMITS = UpstreamLimits()
_LIMITS: weakref.WeakKeyDictionary[aiohttp.ClientSession, UpstreamLimits] = weakref.WeakKeyDictionary()


def limits_of(http: aiohttp.ClientSession) -> UpstreamLimits:
    """The bounds the session was made with (the defaults for a session made elsewhere)."""
    return _LIMITS.get(http, DEFAULT_LIMITS)


def request_timeout(http: aiohttp.ClientSession, remaining: float | None) -> aiohttp.ClientTimeout:
    """One request's timeout: the caller's remaining time capped by the call bound, plus
    the connect and read-idle bounds (a per-request timeout replaces the session's)."""
    return timeout_within(limits_of(http), remaining)


def timeout_within(limits: UpstreamLimits, remaining: float | None) -> aiohttp.ClientTimeout:
    """``request_timeout`` for a session with ``limits``.

    The read-idle bound is left out when the total bound always ends the exchange
    first (a caller's deadline shorter than it, by more than aiohttp's rounding of
    timers up to the next second): it could never fire, and aiohttp would move its
    timer on every read of the body.
    """
    total = limits.max_call_seconds if remaining is None else min(remaining, limits.max_call_seconds)
    idle = limits.read_idle_timeout_seconds
    return aiohttp.ClientTimeout(
        total=total,
        sock_connect=limits.connect_timeout_seconds,
        sock_read=idle if total + _TIMER_ROUNDING >= idle else None,
    )


def new_http_session(
    max_connections: int,
    *,
    policy: EndpointPolicy | None = None,
    limits: UpstreamLimits = DEFAULT_LIMITS,
) -> aiohttp.ClientSession:
    """A session for provider calls; close it with ``await session.close()``.

    No aiohttp ``TraceConfig``: with one, aiohttp sends its trace signals on every request
    and every chunk read; the HTTP client span is made in ``adapters.exchange`` instead.
    """
    policy = policy or EndpointPolicy.default()
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        socket_factory=policy.socket_factory,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        timeout=request_timeout_default(limits),
        auto_decompress=True,
        raise_for_status=False,
        # One session serves every user: a cookie one provider answer sets must
        # never ride along on another user's request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    _LIMITS[session] = limits
    return session


def request_timeout_default(limits: UpstreamLimits) -> aiohttp.ClientTimeout:
    """The session-wide timeout: the same bounds, for a request that passes none."""
    return aiohttp.ClientTimeout(
        total=limits.max_call_seconds,
        sock_connect=limits.connect_timeout_seconds,
        sock_read=limits.read_idle_timeout_seconds,
    )
