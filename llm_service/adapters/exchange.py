"""The HTTP exchanges every wire format shares: a streamed POST, and a JSON GET.

``EventStream`` is an async context manager and iterator: entering it sends the
request (bounded by one ``aiohttp.ClientTimeout(total=timeout)`` that also covers
reading the body) and turns a non-2xx answer into a domain error; iterating it
yields ``SSEEvent``\\ s decoded incrementally from whatever the network delivers;
leaving it releases the response, which closes the connection at once unless the
body was read to the end. It is a class rather than an async generator on
purpose: closing the adapter's generator early then closes the upstream response
immediately, with no inner generator left for the garbage collector to finalise.
``get_json`` is the GET used by probes and model listings. All failures go
through ``adapters.errors``.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import aiohttp

from llm_service import metrics
from llm_service.adapters.base import Endpoint
from llm_service.adapters.errors import from_response, from_stream_error, transport_errors
from llm_service.sse import SSEDecoder, SSEEvent
from rmllm_common.errors import ProviderError

_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class EventStream:
    """One streamed request: ``async with EventStream(...) as events: async for e in events``."""

    __slots__ = ("_body", "_decoder", "_endpoint", "_http", "_pending", "_resp", "_timeout", "_url", "cut")

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        url: str,
        body: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self._http = http
        self._endpoint = endpoint
        self._url = url
        self._body = body
        self._timeout = timeout
        self._decoder = SSEDecoder()
        self._pending: deque[SSEEvent] = deque()
        self._resp: aiohttp.ClientResponse | None = None
        self.cut = False  # the body ended in the middle of an event

    async def __aenter__(self) -> EventStream:
        endpoint = self._endpoint
        spec = endpoint.spec
        headers = endpoint.headers()
        headers.update(_STREAM_HEADERS)
        with transport_errors(spec, self._timeout):
            resp = await self._http.post(
                self._url,
                data=json.dumps(self._body, ensure_ascii=False).encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
            self._resp = resp
            metrics.provider_http_response(spec.id, resp.status)
            try:
                if resp.status >= 300:
                    body = await resp.read()
                    raise from_response(spec, resp.status, resp.headers, body, endpoint.api_key.reveal())
                if resp.content_type == "application/json":  # an error (or a non-stream answer), not SSE
                    raise _json_instead_of_stream(endpoint, await resp.read())
            except BaseException:
                resp.close()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._resp is not None:
            self._resp.release()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SSEEvent:
        pending = self._pending
        while not pending:
            assert self._resp is not None
            with transport_errors(self._endpoint.spec, self._timeout, streaming=True):
                chunk = await self._resp.content.readany()
            if not chunk:
                self.cut = self._decoder.flush()
                raise StopAsyncIteration
            pending.extend(self._decoder.feed(chunk))
        return pending.popleft()


def load_event(endpoint: Endpoint, data: str) -> dict[str, Any]:
    """An event's JSON object; a malformed event is a ``ProviderError`` (the stream is unusable)."""
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        spec = endpoint.spec
        raise ProviderError(f"{spec.display_name} sent a malformed stream event", provider=spec.id)
    return payload


def _json_instead_of_stream(endpoint: Endpoint, body: bytes) -> Exception:
    spec = endpoint.spec
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("error"):
        return from_stream_error(spec, payload, endpoint.api_key.reveal())
    return ProviderError(
        f"{spec.display_name} answered with JSON instead of an event stream", provider=spec.id
    )


async def get_json(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    method: str,
    url: str,
    timeout: float | None,
    *,
    params: dict[str, str] | None = None,
) -> Any:
    """``method url`` with the endpoint's auth; the parsed JSON body, or a domain error."""
    spec = endpoint.spec
    with transport_errors(spec, timeout):
        async with http.request(
            method,
            url,
            headers=endpoint.headers(),
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            metrics.provider_http_response(spec.id, resp.status)
            body = await resp.read()
            if resp.status >= 300:
                raise from_response(spec, resp.status, resp.headers, body, endpoint.api_key.reveal())
    try:
        return json.loads(body) if body else None
    except ValueError as e:
        raise ProviderError(
            f"{spec.display_name} answered {method} {url} with non-JSON", provider=spec.id
        ) from e
