"""What is known about the call being served, and what happens when it starts and ends.

The server's error interceptor calls ``Observer.begin`` before a handler runs and
``Observer.end`` after it finished, with the gRPC code and ErrorInfo reason it
ended with. ``begin`` adopts or makes the request id (``requestctx``), returns it
to the caller in the trailing metadata (``x-request-id``; the error path adds it
to the abort's metadata too), continues the caller's W3C trace (``traceparent``)
in a server span when tracing is on, and puts a ``Call`` in a context variable
that the service's code fills in as it learns more (provider, model, tokens, time
to the first token). ``end`` hands the finished call to the service's ``Hooks``
(its metrics), ends the span, and writes the one JSON log line of the call at INFO
on the ``rmllm.calls`` logger. With metrics and tracing off, the cost is the
``Call`` object, two clock reads and the log line.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from rmllm_common import logs, requestctx

call_log = logging.getLogger("rmllm.calls")
_PID = os.getpid()
TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_OK = grpc.StatusCode.OK
_SPAN_NAMES_KEPT = 256  # method paths whose span name and attributes are kept
# Server spans mark only these codes as errors (OpenTelemetry RPC semantic conventions).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(slots=True)
class Call:
    """One call being served; the service's code fills in what it learns."""

    method: str
    request_id: str
    started: float
    streaming: bool
    trace_id: str = ""
    provider: str = ""
    model: str = ""
    model_known: bool = False
    response_model: str = ""
    response_id: str = ""
    finish_reason: str = ""
    first_token_seconds: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    usage_seen: bool = False
    span: Any = None
    _otel_token: Any = None

    def elapsed(self) -> float:
        """Seconds since the call reached the handler chain."""
        return time.perf_counter() - self.started


_current: ContextVar[Call | None] = ContextVar("rmllm_call", default=None)


def current() -> Call | None:
    """The call being served in this context (None outside a call)."""
    return _current.get()


class Hooks(Protocol):
    """A service's metrics for every call."""

    def started(self, call: Call) -> None:
        """The handler is about to run."""

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        """The handler ended with ``code`` / ``reason`` after ``seconds``."""


class Observer:
    """Begins and ends every call of one server: request id, trace, hooks, log line."""

    def __init__(self, service: str = "", hooks: Hooks | None = None, *, tracing: bool = False) -> None:
        self.service = service
        self._hooks = hooks
        self._tracer: Any = None
        self._unsampled: Any = None  # rmllm_common.sampling.Unsampled, where it applies
        if tracing:
            # Only with tracing on; bound once here, not imported at every call.
            from opentelemetry import context, propagate, trace  # noqa: PLC0415

            from rmllm_common.sampling import Unsampled  # noqa: PLC0415 - loads the SDK

            self._tracer = trace.get_tracer("rmllm_common.observe")
            self._unsampled = Unsampled.of(self._tracer)
            self._attach = context.attach
            self._detach = context.detach
            self._extract = propagate.extract
            self._in_context = trace.set_span_in_context
            self._server = trace.SpanKind.SERVER
            self._status = trace.Status
            self._error = trace.StatusCode.ERROR
        # Per method path: the span's name and attributes, built once (see ``_span_of``).
        self._spans: dict[str, tuple[str, dict[str, str]]] = {}

    def begin(self, path: str, context: grpc.aio.ServicerContext[Any, Any], streaming: bool) -> Call:
        """Start the call of method ``path`` (``/package.Service/Method``)."""
        incoming: str | bytes | None = None
        parent: str | None = None
        carrier: dict[str, str] | None = None
        for key, value in context.invocation_metadata() or ():
            if key == requestctx.REQUEST_ID_HEADER:
                incoming = value
            elif key == TRACEPARENT and isinstance(value, str):
                parent = value
                if self._tracer is not None:
                    carrier = carrier or {}
                    carrier[key] = value
            elif key == "tracestate" and self._tracer is not None and isinstance(value, str):
                carrier = carrier or {}
                carrier[key] = value
        request_id = requestctx.begin(incoming)
        context.set_trailing_metadata(((requestctx.REQUEST_ID_HEADER, request_id),))
        call = Call(path.rsplit("/", 1)[-1], request_id, time.perf_counter(), streaming)
        if self._tracer is not None:
            self._start_span(call, path, carrier)
        elif parent is not None and _TRACEPARENT.fullmatch(parent):  # log the caller's trace id all the same
            call.trace_id = parent[3:35]
        _current.set(call)
        if self._hooks is not None:
            self._hooks.started(call)
        return call

    def _start_span(self, call: Call, path: str, carrier: dict[str, str] | None) -> None:
        fast = self._unsampled
        if fast is not None:
            # Not sampled, decided without the SDK: the span is not attached either (nothing
            # under a span that is not sampled looks for it; the vault client propagates it
            # from ``call.span``).
            if carrier is None:
                unsampled = fast.root()
            elif len(carrier) == 1 and TRACEPARENT in carrier:
                unsampled = fast.under(carrier[TRACEPARENT])
            else:
                unsampled = None
            if unsampled is not None:
                call.span = unsampled
                call.trace_id = format(unsampled.get_span_context().trace_id, "032x")
                return
        name, attributes = self._spans.get(path) or self._span_of(path)
        span = self._tracer.start_span(
            name,
            context=self._extract(carrier) if carrier else None,
            kind=self._server,
            attributes=attributes,  # the SDK copies them into the span
        )
        call.span = span
        call.trace_id = format(span.get_span_context().trace_id, "032x")
        call._otel_token = self._attach(self._in_context(span))

    def _span_of(self, path: str) -> tuple[str, dict[str, str]]:
        name = path.strip("/")
        service, _, method = name.partition("/")
        found = (name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        if len(self._spans) < _SPAN_NAMES_KEPT:  # unknown methods' paths are the caller's to choose
            self._spans[path] = found
        return found

    def end(self, call: Call, code: grpc.StatusCode, reason: str) -> None:
        """Finish the call: metrics, span, and the call's log line."""
        seconds = call.elapsed()
        if self._hooks is not None:
            self._hooks.finished(call, code, reason, seconds)
        if call.span is not None:
            self._end_span(call, code, reason)
        entry: dict[str, Any] = {
            "event": "call",
            "request_id": call.request_id,  # explicit: a log handler may format on another thread
            "service": self.service,
            "method": call.method,
            "code": code.name,
            "reason": reason,
            "latency_seconds": round(seconds, 6),
            "pid": _PID,  # which worker, with --workers N
        }
        if call.trace_id:
            entry["trace_id"] = call.trace_id
        if call.provider:
            entry["provider"] = call.provider
        if call.model:
            entry["model"] = call.model
        if call.first_token_seconds is not None:
            entry["ttft_seconds"] = round(call.first_token_seconds, 6)
        if call.usage_seen:
            # "usage_*": the log formatter masks any field whose name contains "token".
            entry["usage_input"] = call.input_tokens
            entry["usage_output"] = call.output_tokens
            for name, value in (
                ("usage_cache_read", call.cache_read_tokens),
                ("usage_cache_creation", call.cache_creation_tokens),
                ("usage_reasoning", call.reasoning_tokens),
            ):
                if value:
                    entry[name] = value
        logs.info_event(call_log, "call finished", entry)

    def _end_span(self, call: Call, code: grpc.StatusCode, reason: str) -> None:
        span = call.span
        if span.is_recording():  # else (not sampled) every call below does nothing
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                span.set_attribute("error.type", reason or code.name)
                span.set_status(self._status(self._error, reason or code.name))
            span.end()
        token = call._otel_token
        if token is not None:
            call._otel_token = None
            self._detach(token)
