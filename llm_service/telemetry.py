"""The LLM service's call sites for metrics and traces: small hooks, cheap when off.

``setup`` turns on what ``TelemetrySettings`` asks for and returns the server's
``Observer``. The chat path calls small hooks on the current ``observe.Call``:
``note_provider`` / ``note_prepared`` (provider and model known),
``note_first_event`` (the time to first token, from ``retrying``) and
``note_answer`` (the answer's model, id, finish reason, tokens and cost); with
tracing on, ``traced`` wraps the event stream in the GenAI ``chat {model}`` span
(with it off, no extra layer). ``http_span`` / ``end_http_span`` make the provider
call's HTTP client span, called by ``adapters.exchange`` around the request (no
trace headers are sent to providers: their systems are not part of our trace);
provider HTTP statuses are counted there too. ``vault_stub`` wraps the vault stub:
it times vault calls and carries ``traceparent`` to the vault. ``GenAIHooks``
aggregates the OpenTelemetry GenAI histograms itself and hands them to the metric
reader at each export (``rmllm_common.telemetry.set_metric_producer``). Message
contents go on spans only with the opt-in variable.

Cost: the span of the call being served (``observe``) carries the sampler's
decision. Under a span that is not sampled, no child span is made at all (the
vault still gets ``traceparent``, with the not-sampled flag, formatted here from the
call's span when the propagator is W3C's), so with
``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` the other calls pay a context
look-up, not three spans; and the call's own span, when not sampled, is made without
the SDK's ``start_span`` (``rmllm_common.sampling``). Every built-in sampler decides a
child like its parent (or, for ``traceidratio``, by the same trace id), so this drops
nothing they would keep. Attributes known at the start are passed to ``start_span``; those known at
the end go in one ``set_attributes``. A Chat's up to five GenAI metric values cost
one lock and five bucket look-ups (the SDK's instruments: ~7 µs each).
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import grpc
import yarl

from llm_service import metrics
from rmllm_common import observe
from rmllm_common.observe import Call, Hooks, Observer
from rmllm_common.registry import ProviderSpec
from rmllm_common.telemetry import GENAI_BUCKETS, TelemetrySettings, set_metric_producer

if TYPE_CHECKING:  # at run time only with tracing on: adapters.exchange imports this module
    from llm_service.adapters.base import ChatEvent, ChatParams, Finished

# gen_ai.provider.name: the semantic conventions' well-known values, else our registry id.
GENAI_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini", "grok": "x_ai"}
CHAT_METHODS = frozenset({"Chat", "StreamChat"})
_URL_CACHE_SIZE = 512  # provider URLs whose span attributes are kept (a custom base URL is per user)

# With tracing on: the tracer and the OpenTelemetry modules, bound once (no import per call).
_tracer: Any = None
_trace: Any = None
_otel_context: Any = None
_propagate: Any = None
_w3c_headers: Any = None  # rmllm_common.sampling.w3c_headers, with tracing on
_capture_content = False
_url_attributes: dict[str, dict[str, Any]] = {}


def setup(settings: TelemetrySettings) -> Observer:
    """Turn on the metrics and tracing ``settings`` ask for; the server's call observer."""
    global _tracer, _trace, _otel_context, _propagate, _w3c_headers, _capture_content  # noqa: PLW0603 - one tracer per process
    hooks: list[Hooks] = []
    if settings.prometheus:
        hooks.append(metrics.CallHooks(metrics.enable()))
    if settings.otel_metrics:
        hooks.append(GenAIHooks())
    else:
        set_metric_producer("gen_ai", None)
    _tracer = _trace = _otel_context = _propagate = None
    _capture_content = False
    if settings.traces:
        from opentelemetry import context, propagate, trace  # noqa: PLC0415

        from rmllm_common.sampling import w3c_headers  # noqa: PLC0415 - loads the SDK

        _tracer = trace.get_tracer("llm_service")
        _trace, _otel_context, _propagate, _w3c_headers = trace, context, propagate, w3c_headers
        _capture_content = settings.capture_content
    return Observer("llm", _combine(hooks), tracing=settings.traces)


def _combine(hooks: list[Hooks]) -> Hooks | None:
    if len(hooks) <= 1:
        return hooks[0] if hooks else None
    return _AllHooks(hooks)


class _AllHooks:
    def __init__(self, hooks: list[Hooks]) -> None:
        self._hooks = hooks

    def started(self, call: Call) -> None:
        for hook in self._hooks:
            hook.started(call)

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        for hook in self._hooks:
            hook.finished(call, code, reason, seconds)


def note_provider(spec: ProviderSpec) -> None:
    """The call's provider is known (the request is valid)."""
    call = observe.current()
    if call is not None:
        call.provider = spec.id


def note_prepared(spec: ProviderSpec, model: str) -> None:
    """The call's provider and model are known."""
    call = observe.current()
    if call is not None:
        call.provider = spec.id
        call.model = model
        call.model_known = spec.model(model) is not None


def note_first_event() -> None:
    """The provider's first event arrived (the time to first token)."""
    call = observe.current()
    if call is not None and call.first_token_seconds is None:
        call.first_token_seconds = call.elapsed()


def note_answer(finished: Finished, usage: Any) -> None:
    """The answer's final event and its ``Usage`` message (token counts and cost)."""
    call = observe.current()
    if call is None:
        return
    call.response_model = finished.model or call.model
    call.response_id = finished.response_id
    call.finish_reason = finished.finish_reason.name.lower()
    call.usage_seen = True
    call.input_tokens = usage.input_tokens
    call.output_tokens = usage.output_tokens
    call.cost_usd = usage.cost_usd
    # Fields of the second wave's Usage, when this build has them.
    call.cache_read_tokens = getattr(usage, "cache_read_input_tokens", 0)
    call.cache_creation_tokens = getattr(usage, "cache_creation_input_tokens", 0)
    call.reasoning_tokens = getattr(usage, "reasoning_tokens", 0)


def _spans_wanted() -> bool:
    """Whether a span started now could be sampled: tracing is on and the current span is
    recording, or there is none (then the sampler decides a new trace)."""
    if _tracer is None:
        return False
    call = observe.current()
    if call is not None and call.span is not None and not call.span.is_recording():
        return False  # the call's server span is not sampled, so neither is anything under it
    parent = _trace.get_current_span()
    return bool(parent.is_recording() or not parent.get_span_context().is_valid)


def traced(
    events: AsyncGenerator[ChatEvent, None], spec: ProviderSpec, params: ChatParams
) -> AsyncGenerator[ChatEvent, None]:
    """``events`` inside the GenAI span when this call is traced (else ``events`` itself: no
    extra layer)."""
    if not _spans_wanted():
        return events
    return _in_chat_span(events, spec, params)


async def _in_chat_span(
    events: AsyncGenerator[ChatEvent, None], spec: ProviderSpec, params: ChatParams
) -> AsyncGenerator[ChatEvent, None]:
    from llm_service.adapters.base import TextDelta  # noqa: PLC0415 - see the TYPE_CHECKING import

    call = observe.current() or Call("", "", time.perf_counter(), False)
    span = _start_chat_span(spec, params)
    texts: list[str] | None = [] if _capture_content else None
    error: BaseException | None = None
    try:
        # The span is the current one while the provider is called (the HTTP span's parent).
        token = _otel_context.attach(_trace.set_span_in_context(span))
        try:
            async for event in events:
                if texts is not None and type(event) is TextDelta:
                    texts.append(event.text)
                yield event
        finally:
            _otel_context.detach(token)
    except BaseException as exc:
        error = exc
        raise
    finally:
        await events.aclose()
        _end_chat_span(span, call, error, texts)


def _start_chat_span(spec: ProviderSpec, params: ChatParams) -> Any:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GENAI_PROVIDER_NAMES.get(spec.id, spec.id),
        "gen_ai.request.model": params.model,
    }
    if params.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = params.max_tokens
    if params.temperature is not None:
        attributes["gen_ai.request.temperature"] = params.temperature
    if params.top_p is not None:
        attributes["gen_ai.request.top_p"] = params.top_p
    if _capture_content:
        attributes["gen_ai.input.messages"] = json.dumps(
            [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in params.messages],
            ensure_ascii=False,
        )
    return _tracer.start_span(f"chat {params.model}", kind=_trace.SpanKind.CLIENT, attributes=attributes)


def _end_chat_span(span: Any, call: Call, error: BaseException | None, texts: list[str] | None) -> None:
    attributes: dict[str, Any] = {}
    if call.response_model:
        attributes["gen_ai.response.model"] = call.response_model
    if call.response_id:
        attributes["gen_ai.response.id"] = call.response_id
    if call.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (call.finish_reason,)
    if call.usage_seen:
        attributes["gen_ai.usage.input_tokens"] = call.input_tokens
        attributes["gen_ai.usage.output_tokens"] = call.output_tokens
        if call.cache_read_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = call.cache_read_tokens
        if call.cache_creation_tokens:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = call.cache_creation_tokens
        if call.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = call.reasoning_tokens
    if texts is not None and call.finish_reason:
        output = [{"role": "assistant", "parts": [{"type": "text", "content": "".join(texts)}]}]
        attributes["gen_ai.output.messages"] = json.dumps(output, ensure_ascii=False)
    if error is not None and not isinstance(error, GeneratorExit):  # GeneratorExit: the caller left
        kind = getattr(error, "reason", None) or type(error).__qualname__
        attributes["error.type"] = kind
        if isinstance(error, Exception):
            span.record_exception(error)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, kind))
    if attributes:
        span.set_attributes(attributes)
    span.end()


def http_span(method: str, url: str) -> Any:
    """The provider call's HTTP client span, started (None when this call is not traced).

    End it with ``end_http_span`` once the answer's status is known, or the request failed.
    """
    if not _spans_wanted():
        return None
    attributes = _url_attributes.get(url)
    if attributes is None:
        if len(_url_attributes) >= _URL_CACHE_SIZE:
            _url_attributes.clear()
        parsed = yarl.URL(url)
        attributes = _url_attributes[url] = {
            "server.address": parsed.host or "",
            "server.port": parsed.port or 0,
            # Never a query or user info: a key could ride there.
            "url.full": str(parsed.with_query(None).with_user(None)),
        }
    return _tracer.start_span(
        method, kind=_trace.SpanKind.CLIENT, attributes={"http.request.method": method, **attributes}
    )


def end_http_span(span: Any, status: int | None, error: BaseException | None = None) -> None:
    """End ``http_span``'s span with the answer's ``status``, or the request's ``error``."""
    if error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
    elif status is not None:
        if status >= 400:
            span.set_attributes({"http.response.status_code": status, "error.type": str(status)})
            span.set_status(_trace.Status(_trace.StatusCode.ERROR))
        else:
            span.set_attribute("http.response.status_code", status)
    span.end()


class _TimedMethod:
    """One vault stub method, timed (and traced, with ``traceparent`` in its metadata)."""

    __slots__ = ("_attributes", "_call", "_name", "_span_name")

    def __init__(self, call: Any, path: str) -> None:
        self._call = call
        self._span_name = path.strip("/")
        service, _, self._name = self._span_name.partition("/")
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": self._name}

    async def __call__(self, request: Any, *, metadata: Any = (), **options: Any) -> Any:
        started = time.perf_counter()
        span = None
        if _tracer is not None:
            span, metadata = self._traced(metadata)
        code = grpc.StatusCode.OK
        try:
            return await self._call(request, metadata=metadata, **options)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            metrics.vault_call(self._name, code.name, time.perf_counter() - started)
            if span is not None:
                if code == grpc.StatusCode.OK:
                    span.set_attribute("rpc.grpc.status_code", 0)
                else:
                    span.set_attributes({"rpc.grpc.status_code": code.value[0], "error.type": code.name})
                    span.set_status(_trace.Status(_trace.StatusCode.ERROR))
                span.end()

    def _traced(self, metadata: Any) -> tuple[Any, Any]:
        """The client span (None when this call is not traced) and ``metadata`` with the trace
        context, so the vault continues the trace, or knows it is not sampled."""
        span = context = None
        if _spans_wanted():
            span = _tracer.start_span(
                self._span_name, kind=_trace.SpanKind.CLIENT, attributes=self._attributes
            )
            context = _trace.set_span_in_context(span)
        elif (call := observe.current()) is not None and call.span is not None:
            # Not sampled (and, a new trace's span, not attached): the call's own span context.
            headers = _w3c_headers(call.span)
            if headers is not None:
                return None, (*metadata, *headers)
            context = _trace.set_span_in_context(call.span)
        carrier: dict[str, str] = {}
        _propagate.inject(carrier, context=context)
        return span, (*metadata, *carrier.items()) if carrier else metadata


class _TimedVaultStub:
    """The vault stub with its per-call unary RPCs (``ResolveCredentials``, ``AuthenticateToken``)
    timed and traced; the streaming ones pass through.

    A wrapper rather than a grpc.aio client interceptor: the interceptor machinery
    adds a task and a call wrapper to every vault call, which costs more CPU than
    what it measures.
    """

    def __init__(self, stub: Any, service: str) -> None:
        self._stub = stub
        self.ResolveCredentials = _TimedMethod(stub.ResolveCredentials, f"/{service}/ResolveCredentials")
        self.AuthenticateToken = _TimedMethod(stub.AuthenticateToken, f"/{service}/AuthenticateToken")

    def __getattr__(self, name: str) -> Any:
        """The other methods (the usage stream, invalidations) as the stub has them."""
        return getattr(self._stub, name)


def vault_stub(stub: Any) -> Any:
    """``stub`` itself while metrics and tracing are off; else the timed and traced wrapper."""
    if metrics.active() is None and _tracer is None:
        return stub
    from realmultillm.vault.v1 import vault_pb2  # noqa: PLC0415

    return _TimedVaultStub(stub, vault_pb2.DESCRIPTOR.services_by_name["VaultService"].full_name)


_ATTRIBUTE_SETS_SIZE = 1024  # distinct (provider, model, answer's model, error) kept
_POINTS_PER_METRIC = 2000  # the SDK's default cardinality limit; past it, one overflow point
_OVERFLOW = {"otel.metric.overflow": True}
# The four GenAI histograms: (name, unit, description, bucket boundaries).
_GENAI_METRICS = (
    ("gen_ai.client.operation.duration", "s", "GenAI operation duration."),
    ("gen_ai.client.token.usage", "{token}", "Number of input and output tokens used."),
    ("gen_ai.server.time_to_first_token", "s", "Time to generate the first token."),
    ("gen_ai.server.time_per_output_token", "s", "Time per output token generated after the first token."),
)
_DURATION, _TOKENS, _TTFT, _TPOT = range(4)
_INPUT, _OUTPUT = 1, 2  # which attribute set of a call: 0 its own, 1 and 2 with gen_ai.token.type


class _Point:
    """One histogram data point being aggregated: bucket counts, sum, count, min, max."""

    __slots__ = ("attributes", "buckets", "count", "max", "min", "sum")

    def __init__(self, attributes: dict[str, Any], buckets: int) -> None:
        self.attributes = attributes
        self.buckets = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class GenAIHooks:
    """The OpenTelemetry GenAI metrics of every Chat and StreamChat.

    Aggregated here, in explicit-bucket histograms with the spec's boundaries, and added to
    each periodic OTLP export (``rmllm_common.telemetry.set_metric_producer``): a call's up
    to five values cost one lock and five bucket look-ups, where the SDK's synchronous
    instruments cost ~7 µs a value (a measurement object, its attributes cleaned, copied
    and hashed, the exemplar filter). What is exported is what the SDK would export:
    cumulative points (or deltas when the exporter prefers them), min and max, no
    exemplars, one overflow point past 2000 attribute sets a metric. The attribute dicts
    of each (provider, model, answer's model, error) are built once.
    """

    def __init__(self) -> None:
        self._bounds = [GENAI_BUCKETS[name] for name, _, _ in _GENAI_METRICS]
        self._lock = threading.Lock()
        self._points: list[dict[Any, _Point]] = [{} for _ in _GENAI_METRICS]
        self._since = time.time_ns()
        self._sets: dict[tuple[str, str, str, str], tuple[dict[str, Any], ...]] = {}
        set_metric_producer("gen_ai", self.produce)

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        if call.method not in CHAT_METHODS or not call.provider:
            return
        error = "" if code == grpc.StatusCode.OK else reason or code.name
        key = (call.provider, call.model, call.response_model, error)
        sets = self._sets.get(key)
        if sets is None:
            sets = self._attribute_sets(key)
        first = call.first_token_seconds
        with self._lock:
            self._add(_DURATION, key, sets[0], seconds)
            if call.usage_seen:
                self._add(_TOKENS, (key, _INPUT), sets[_INPUT], call.input_tokens)
                self._add(_TOKENS, (key, _OUTPUT), sets[_OUTPUT], call.output_tokens)
            if first is not None:
                self._add(_TTFT, key, sets[0], first)
                if call.output_tokens > 1:
                    self._add(_TPOT, key, sets[0], max(0.0, (seconds - first) / (call.output_tokens - 1)))

    def _add(self, metric: int, key: Any, attributes: dict[str, Any], value: float) -> None:
        points = self._points[metric]
        point = points.get(key)
        if point is None:
            if len(points) >= _POINTS_PER_METRIC:
                key, attributes = "overflow", _OVERFLOW
                point = points.get(key)
            if point is None:
                point = points[key] = _Point(attributes, len(self._bounds[metric]) + 1)
        point.buckets[bisect.bisect_left(self._bounds[metric], value)] += 1
        point.count += 1
        point.sum += value
        point.min = min(point.min, value)
        point.max = max(point.max, value)

    def produce(self, delta: bool) -> list[Any]:
        """The four histograms as OpenTelemetry SDK ``Metric``s (called by the metric reader's
        thread at each export); with ``delta``, what came since the last call."""
        from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
        )

        now = time.time_ns()
        with self._lock:
            taken = [[(p.attributes, list(p.buckets), p.count, p.sum, p.min, p.max) for p in points.values()]
                     for points in self._points]  # fmt: skip
            since = self._since
            if delta:
                self._points = [{} for _ in _GENAI_METRICS]
                self._since = now
        temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
        metrics = []
        for (name, unit, description), bounds, points in zip(
            _GENAI_METRICS, self._bounds, taken, strict=True
        ):
            if not points:
                continue
            data = [
                HistogramDataPoint(
                    attributes=attributes,
                    start_time_unix_nano=since,
                    time_unix_nano=now,
                    count=count,
                    sum=total,
                    bucket_counts=buckets,
                    explicit_bounds=bounds,
                    min=low,
                    max=high,
                )
                for attributes, buckets, count, total, low, high in points
            ]
            metrics.append(Metric(name, description, unit, Histogram(data, temporality)))
        return metrics

    def _attribute_sets(self, key: tuple[str, str, str, str]) -> tuple[dict[str, Any], ...]:
        provider, model, response_model, error = key
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": GENAI_PROVIDER_NAMES.get(provider, provider),
            "gen_ai.request.model": model,
        }
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        if error:
            attributes["error.type"] = error
        sets = (
            attributes,
            {**attributes, "gen_ai.token.type": "input"},
            {**attributes, "gen_ai.token.type": "output"},
        )
        if len(self._sets) >= _ATTRIBUTE_SETS_SIZE:
            self._sets.clear()
        self._sets[key] = sets
        return sets
