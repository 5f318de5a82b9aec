"""The HTTP exchanges every wire format shares: a streamed POST, and a JSON GET.

``EventStream`` is an async context manager and iterator: entering it sends the
request (bounded by ``http.request_timeout``: the caller's remaining time capped by
the server's call bound, plus the connect and read-idle bounds) and turns a non-2xx
answer, or a JSON one, into a domain error, reading at most ``max_error_bytes`` of its
body (with tracing on, the request's HTTP client span covers the time to the
answer's status, see ``telemetry.http_span``); with ``json_answer`` (a format whose
whole, non-streamed answer has the shape of its events), a 200 JSON object that is
no error is instead held, read up to ``max_json_bytes``, as the stream's one event,
named ``JSON_ANSWER`` (with ``ndjson``, a JSON body that is not one value is read as
the lines it holds, a stream labelled ``application/json``); iterating it yields
``SSEEvent``\\ s decoded incrementally from whatever the network delivers (with
``ndjson``, by ``ndjson.NDJSONDecoder``: one event per line of a newline-delimited
JSON body, Ollama's native stream; the last line may lack its LF), within the
session's ``UpstreamLimits`` (bytes, events, line and
event length: past one, the connection is closed and ``UpstreamResponseTooLarge``
raised); leaving it releases the response, which closes the connection at once
unless the body was read to the end. When a StreamChat coalesces deltas, a used-up
read is reported as ``readends.READ_END`` (see ``readends``). Redirects are never followed: a 3xx is a
provider error, so a key header can never travel to another origin. It is a class
rather than an async generator on purpose: closing the adapter's generator early
then closes the upstream response immediately, with no inner generator left for
the garbage collector to finalise.
``get_json`` is the GET used by probes and model listings (its body bounded by
``max_json_bytes``). JSON from a provider is parsed by ``parse_json``, which turns
nesting too deep to parse into a ``ValueError``; a stream event by ``load_event``,
under the same rules, without ``json.loads``'s whitespace scans around the value
when there is none. All failures go through ``adapters.errors``.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from llm_service import metrics, telemetry
from llm_service.adapters.base import Endpoint
from llm_service.adapters.errors import from_response, from_stream_error, parse_json, transport_errors
from llm_service.adapters.readends import READ_END, current
from llm_service.http import UpstreamLimits, limits_of, request_timeout, timeout_within
from llm_service.ndjson import NDJSONDecoder
from llm_service.sse import SSEDecoder, SSEEvent, SSELimitExceeded
from rmllm_common.errors import ProviderError, UpstreamResponseTooLarge

_NONE: list[SSEEvent] = []  # shared, never changed: no events pending
JSON_ANSWER = "rmllm-json-answer"
"""The event name of a whole JSON answer held by an ``EventStream(json_answer=True)``."""
_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_NDJSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
_JSON = json.JSONEncoder(ensure_ascii=False)  # what json.dumps(body, ensure_ascii=False) builds per call
_raw_decode = json.JSONDecoder().raw_decode


class EventStream:
    """One streamed request: ``async with EventStream(...) as events: async for e in events``."""

    __slots__ = (
        "_body",
        "_bytes",
        "_decoder",
        "_endpoint",
        "_events",
        "_gauge",
        "_http",
        "_json_answer",
        "_limits",
        "_next",
        "_pending",
        "_resp",
        "_timeout",
        "_url",
        "cut",
    )

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        url: str,
        body: dict[str, Any],
        timeout: float | None,
        *,
        json_answer: bool = False,
        ndjson: bool = False,
    ) -> None:
        self._http = http
        self._json_answer = json_answer
        self._endpoint = endpoint
        self._url = url
        self._body = body
        limits = self._limits = limits_of(http)
        self._timeout = timeout_within(limits, timeout)
        self._decoder: SSEDecoder | NDJSONDecoder = (
            NDJSONDecoder(max_line=limits.max_event_bytes)
            if ndjson
            else SSEDecoder(max_line=limits.max_event_bytes, max_event=limits.max_event_bytes)
        )
        self._pending = _NONE  # the events of the last read, ``_next`` the first not yet taken
        self._next = 0
        self._resp: aiohttp.ClientResponse | None = None
        self._bytes = 0
        self._events = 0
        self._gauge = current()
        self.cut = False  # the body ended in the middle of an event

    async def __aenter__(self) -> EventStream:
        endpoint = self._endpoint
        spec = endpoint.spec
        headers = endpoint.headers()
        headers.update(_NDJSON_HEADERS if isinstance(self._decoder, NDJSONDecoder) else _STREAM_HEADERS)
        span = telemetry.http_span("POST", self._url)
        try:
            resp = await self._http.post(
                self._url,
                data=_JSON.encode(self._body).encode(),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except BaseException as exc:
            if span is not None:
                telemetry.end_http_span(span, None, exc)
            if isinstance(exc, Exception):  # translated only on failure: no context manager on the way
                with transport_errors(spec, self._timeout.total):
                    raise exc
            raise
        if span is not None:
            telemetry.end_http_span(span, resp.status)
        self._resp = resp
        metrics.provider_http_response(spec.id, resp.status)
        if resp.status >= 300 or resp.content_type == "application/json":
            try:
                with transport_errors(spec, self._timeout.total):
                    await self._json_body(resp)
            except BaseException:
                resp.close()
                raise
        return self

    async def _json_body(self, resp: aiohttp.ClientResponse) -> None:
        """A non-2xx or JSON answer instead of a stream: raise its error, or (``json_answer``)
        hold a JSON object that is no error as the one event, named ``JSON_ANSWER``."""
        endpoint = self._endpoint
        spec = endpoint.spec
        limits = self._limits
        if resp.status >= 300:
            body = await read_capped(resp, limits.max_error_bytes)
            raise from_response(spec, resp.status, resp.headers, body, endpoint.api_key.reveal())
        if self._json_answer:  # a whole answer may be long: bounded like any JSON answer
            body = await read_capped(resp, limits.max_json_bytes + 1)
            if len(body) > limits.max_json_bytes:
                raise self._too_large(f"more than {limits.max_json_bytes} bytes")
        else:
            body = await read_capped(resp, limits.max_error_bytes)
        try:
            payload = parse_json(body)
        except ValueError:
            payload = None
        if self._json_answer and isinstance(payload, dict) and not payload.get("error"):
            self._pending, self._next = [SSEEvent(body.decode("utf-8", "replace"), JSON_ANSWER)], 0
            return
        if payload is None and isinstance(self._decoder, NDJSONDecoder):  # lines labelled application/json
            self._bytes += len(body)
            try:
                events = self._decoder.feed(body)
            except SSELimitExceeded as e:
                raise self._too_large(str(e)) from None
            self._events += len(events)
            self._pending, self._next = events or _NONE, 0
            return
        raise _json_instead_of_stream(endpoint, payload)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._resp is not None:
            self._resp.release()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SSEEvent:
        pending = self._pending
        taken = self._next
        if taken < len(pending):
            if taken + 1 == len(pending):  # the last one: hold nothing while the next read waits
                self._pending, self._next = _NONE, 0
            else:
                self._next = taken + 1
            return pending[taken]
        if self._gauge is not None and self._gauge.held:
            return READ_END  # this read is used up: let the consumer send what it holds first
        while True:
            assert self._resp is not None
            try:
                chunk = await self._resp.content.readany()
            except Exception as exc:  # translated only on failure: no context manager held per read
                with transport_errors(self._endpoint.spec, self._timeout.total, streaming=True):
                    raise exc
                raise
            if not chunk:
                return self._end()
            limits = self._limits
            self._bytes += len(chunk)
            if self._bytes > limits.max_response_bytes:
                raise self._too_large(f"more than {limits.max_response_bytes} bytes")
            try:
                events = self._decoder.feed(chunk)
            except SSELimitExceeded as e:
                raise self._too_large(str(e)) from None
            self._events += len(events)
            if self._events > limits.max_events:
                raise self._too_large(f"more than {limits.max_events} events")
            if events:
                if len(events) > 1:
                    self._pending, self._next = events, 1  # the decoder's fresh list, taken over
                return events[0]

    def _end(self) -> SSEEvent:
        """The body ended cleanly: the event its end completes (NDJSON: a last line without
        its LF; the next read ends again, with nothing held), else the end of iteration."""
        events = self._decoder.end()
        if not events:
            self.cut = self._decoder.flush()
            raise StopAsyncIteration
        self._events += 1
        return events[0]

    def _too_large(self, what: str) -> UpstreamResponseTooLarge:
        """Close the upstream connection, drop what was buffered, and say which limit was passed."""
        if self._resp is not None:
            self._resp.close()
        self._pending, self._next = _NONE, 0
        self._decoder.flush()
        spec = self._endpoint.spec
        return UpstreamResponseTooLarge(
            f"{spec.display_name}'s answer went past this server's limit ({what}); the connection was closed",
            provider=spec.id,
        )


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """At most ``cap`` bytes of a body (the rest is never read: close the response after)."""
    buffer = bytearray()
    while len(buffer) < cap:
        chunk = await resp.content.read(cap - len(buffer))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


def load_event(endpoint: Endpoint, data: str) -> dict[str, Any]:
    """An event's JSON object; a malformed event is a ``ProviderError`` (the stream is unusable)."""
    try:
        payload, end = _raw_decode(data)  # json.loads without its whitespace scans: every event comes here
        if end != len(data):  # whitespace after the value, or something that makes it malformed
            payload = json.loads(data)
    except (ValueError, RecursionError):
        try:  # whitespace before the value is allowed, as json.loads allows it
            payload = json.loads(data) if data[:1].isspace() else None
        except (ValueError, RecursionError):
            payload = None
    if type(payload) is not dict:
        spec = endpoint.spec
        raise ProviderError(f"{spec.display_name} sent a malformed stream event", provider=spec.id)
    return payload


def _json_instead_of_stream(endpoint: Endpoint, payload: Any) -> Exception:
    """The error of a JSON body answered instead of a stream (``payload``: parsed, or None)."""
    spec = endpoint.spec
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
    limits: UpstreamLimits = limits_of(http)
    client_timeout = request_timeout(http, timeout)
    span = telemetry.http_span(method, url)
    with transport_errors(spec, client_timeout.total):
        try:
            resp = await http.request(
                method,
                url,
                headers=endpoint.headers(),
                params=params,
                timeout=client_timeout,
                allow_redirects=False,
            )
        except BaseException as exc:
            if span is not None:
                telemetry.end_http_span(span, None, exc)
            raise
        if span is not None:
            telemetry.end_http_span(span, resp.status)
        async with resp:
            metrics.provider_http_response(spec.id, resp.status)
            if resp.status >= 300:
                body = await read_capped(resp, limits.max_error_bytes)
                resp.close()
                raise from_response(spec, resp.status, resp.headers, body, endpoint.api_key.reveal())
            body = await read_capped(resp, limits.max_json_bytes + 1)
            if len(body) > limits.max_json_bytes:
                resp.close()
                raise UpstreamResponseTooLarge(
                    f"{spec.display_name}'s answer went past this server's limit "
                    f"(more than {limits.max_json_bytes} bytes); the connection was closed",
                    provider=spec.id,
                )
    try:
        return parse_json(body) if body else None
    except ValueError as e:
        raise ProviderError(
            f"{spec.display_name} answered {method} {url} with non-JSON", provider=spec.id
        ) from e
