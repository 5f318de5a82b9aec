"""The LLM service's call sites for metrics and traces: small hooks, cheap when off.

``setup`` turns on what ``TelemetrySettings`` asks for and returns the server's
``Observer``. The chat path calls small hooks on the current ``observe.Call``:
``note_provider`` / ``note_prepared`` (provider and model known),
``note_first_event`` (the time to first token, from ``retrying``) and
``note_answer`` (the answer's model, id, finish reason, tokens and cost); with
tracing on, ``traced`` wraps the event stream in the GenAI ``chat {model}`` span
(with it off, no extra layer). ``http_trace_config`` makes the provider call's
client span (no trace headers are sent to providers: their systems are not part
of our trace); provider HTTP statuses are counted in ``adapters.exchange``.
``vault_stub`` wraps the vault stub: it times vault calls and carries
``traceparent`` to the vault. ``GenAIHooks`` records the OpenTelemetry
GenAI metrics. Message contents go on spans only with the opt-in variable.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import grpc

from llm_service import metrics
from llm_service.adapters.base import ChatEvent, ChatParams, Finished, TextDelta
from rmllm_common import observe
from rmllm_common.observe import Call, Hooks, Observer
from rmllm_common.registry import ProviderSpec
from rmllm_common.telemetry import TelemetrySettings

# gen_ai.provider.name: the semantic conventions' well-known values, else our registry id.
GENAI_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini", "grok": "x_ai"}
CHAT_METHODS = frozenset({"Chat", "StreamChat"})

_tracer: Any = None
_capture_content = False


def setup(settings: TelemetrySettings) -> Observer:
    """Turn on the metrics and tracing ``settings`` ask for; the server's call observer."""
    global _tracer, _capture_content  # noqa: PLW0603 - one tracer per process
    hooks: list[Hooks] = []
    if settings.prometheus:
        hooks.append(metrics.CallHooks(metrics.enable()))
    if settings.otel_metrics:
        hooks.append(GenAIHooks())
    _tracer, _capture_content = None, False
    if settings.traces:
        from opentelemetry import trace  # noqa: PLC0415

        _tracer = trace.get_tracer("llm_service")
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


def traced(
    events: AsyncGenerator[ChatEvent, None], spec: ProviderSpec, params: ChatParams
) -> AsyncGenerator[ChatEvent, None]:
    """``events`` inside the GenAI span when tracing is on (else ``events`` itself: no extra layer)."""
    if _tracer is None:
        return events
    return _in_chat_span(events, spec, params)


async def _in_chat_span(
    events: AsyncGenerator[ChatEvent, None], spec: ProviderSpec, params: ChatParams
) -> AsyncGenerator[ChatEvent, None]:
    from opentelemetry import trace  # noqa: PLC0415

    call = observe.current() or Call("", "", time.perf_counter(), False)
    span = _start_chat_span(spec, params)
    texts: list[str] | None = [] if _capture_content else None
    error: BaseException | None = None
    try:
        with trace.use_span(span, end_on_exit=False):
            async for event in events:
                if texts is not None and type(event) is TextDelta:
                    texts.append(event.text)
                yield event
    except BaseException as exc:
        error = exc
        raise
    finally:
        await events.aclose()
        _end_chat_span(span, call, error, texts)


def _start_chat_span(spec: ProviderSpec, params: ChatParams) -> Any:
    from opentelemetry import trace  # noqa: PLC0415

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
    return _tracer.start_span(f"chat {params.model}", kind=trace.SpanKind.CLIENT, attributes=attributes)


def _end_chat_span(span: Any, call: Call, error: BaseException | None, texts: list[str] | None) -> None:
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    if call.response_model:
        span.set_attribute("gen_ai.response.model", call.response_model)
    if call.response_id:
        span.set_attribute("gen_ai.response.id", call.response_id)
    if call.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [call.finish_reason])
    if call.usage_seen:
        span.set_attribute("gen_ai.usage.input_tokens", call.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", call.output_tokens)
        if call.cache_read_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", call.cache_read_tokens)
        if call.cache_creation_tokens:
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", call.cache_creation_tokens)
        if call.reasoning_tokens:
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", call.reasoning_tokens)
    if texts is not None and call.finish_reason:
        output = [{"role": "assistant", "parts": [{"type": "text", "content": "".join(texts)}]}]
        span.set_attribute("gen_ai.output.messages", json.dumps(output, ensure_ascii=False))
    if error is not None and not isinstance(error, GeneratorExit):
        kind = getattr(error, "reason", None) or type(error).__qualname__
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
    span.end()


def http_trace_config() -> aiohttp.TraceConfig | None:
    """The provider session's hook for the HTTP client span (None with tracing off: aiohttp then
    skips its per-request and per-chunk trace signals)."""
    if _tracer is None:
        return None
    config = aiohttp.TraceConfig()
    tracer = _tracer

    async def on_start(_session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        ctx.span = None
        if tracer is not None:
            from opentelemetry import trace  # noqa: PLC0415

            url = params.url
            ctx.span = tracer.start_span(
                params.method,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "http.request.method": params.method,
                    "server.address": url.host or "",
                    "server.port": url.port or 0,
                    "url.full": str(url.with_query(None).with_user(None)),
                },
            )

    async def on_end(_session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        status = params.response.status
        span = ctx.span
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
            span.end()

    async def on_exception(_session: Any, ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        span = getattr(ctx, "span", None)
        if span is not None:
            from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

            span.set_attribute("error.type", type(params.exception).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
            span.end()

    config.on_request_start.append(on_start)
    config.on_request_end.append(on_end)
    config.on_request_exception.append(on_exception)
    return config


class _TimedMethod:
    """One vault stub method, timed (and traced, with ``traceparent`` in its metadata)."""

    __slots__ = ("_call", "_name", "_path")

    def __init__(self, call: Any, path: str) -> None:
        self._call = call
        self._path = path
        self._name = path.rsplit("/", 1)[-1]

    async def __call__(self, request: Any, *, metadata: Any = (), **options: Any) -> Any:
        started = time.perf_counter()
        span = None
        if _tracer is not None:
            span, metadata = _vault_span(self._path, metadata)
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
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code != grpc.StatusCode.OK:
                    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

                    span.set_attribute("error.type", code.name)
                    span.set_status(Status(StatusCode.ERROR))
                span.end()


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


def _vault_span(path: str, metadata: Any) -> tuple[Any, tuple[tuple[str, str], ...]]:
    from opentelemetry import propagate, trace  # noqa: PLC0415

    service, _, method = path.strip("/").partition("/")
    span = _tracer.start_span(
        path.strip("/"),
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, (*metadata, *carrier.items())


class GenAIHooks:
    """The OpenTelemetry GenAI metrics of every Chat and StreamChat."""

    def __init__(self) -> None:
        from opentelemetry import metrics as otel_metrics  # noqa: PLC0415

        meter = otel_metrics.get_meter("llm_service")
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration."
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used."
        )
        self._ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s", description="Time to generate the first token."
        )
        self._tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token",
            unit="s",
            description="Time per output token generated after the first token.",
        )

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        if call.method not in CHAT_METHODS or not call.provider:
            return
        attributes: dict[str, str] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": GENAI_PROVIDER_NAMES.get(call.provider, call.provider),
            "gen_ai.request.model": call.model,
        }
        if call.response_model:
            attributes["gen_ai.response.model"] = call.response_model
        if code != grpc.StatusCode.OK:
            attributes["error.type"] = reason or code.name
        self._duration.record(seconds, attributes)
        if call.usage_seen:
            self._tokens.record(call.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            self._tokens.record(call.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        if call.first_token_seconds is not None:
            self._ttft.record(call.first_token_seconds, attributes)
            if call.output_tokens > 1:
                per_token = (seconds - call.first_token_seconds) / (call.output_tokens - 1)
                self._tpot.record(max(0.0, per_token), attributes)
