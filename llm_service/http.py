"""The process's one ``aiohttp.ClientSession`` towards providers.

Created once when the server is built and closed when it stops, so connections
(and TLS sessions) are reused across requests: a keep-alive ``TCPConnector`` with a
bounded pool, DNS answers cached for a few minutes, no proxy settings taken from
the environment (``trust_env=False``: a stray ``HTTPS_PROXY`` must not capture
keys), no cookie jar (the session is shared by every user), and no session-wide
timeout (each adapter call is bounded by the caller's remaining deadline instead).
Responses are decompressed incrementally by aiohttp, which suits streamed bodies.
"""

from __future__ import annotations

import aiohttp

KEEPALIVE_SECONDS = 30.0
DNS_CACHE_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 30.0


def new_http_session(
    max_connections: int, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """A session for provider calls; close it with ``await session.close()``.

    ``trace_configs``: the telemetry hooks (``llm_service.telemetry``), when on.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
        ttl_dns_cache=DNS_CACHE_SECONDS,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS),
        auto_decompress=True,
        raise_for_status=False,
        # One session serves every user: a cookie one provider answer sets must
        # never ride along on another user's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        trace_configs=trace_configs,
    )
