"""The not-sampled root span of a call, made without the OpenTelemetry SDK's ``start_span``.

With tracing on at a ratio (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, 1 % say),
99 calls in 100 start a server span that records nothing, and the SDK's ``start_span``
for it (ids, the sampler's result object, trace flags, a span context, a no-op span, the
context attached and detached) was most of what tracing cost such a call
(docs/PERFORMANCE.md). For a call that brings no trace context of its caller, a ratio
sampler decides on the trace id alone, so the decision is taken here first:

- "not sampled": the span context is made here, the one the SDK would make (a random
  trace id, a random span id, flags "random trace id, not sampled", no trace state);
- "sampled": the SDK makes the span as always, with that same trace id
  (``PrimedIds``), so the share of calls sampled is the configured ratio.

Used only when it is exact: the SDK's tracer, ``PrimedIds`` as its id generator (the one
``rmllm_common.telemetry`` installs) and a ``TraceIdRatioBased`` sampler, alone or as the
root of a ``ParentBased`` one. Any other sampler (a custom one may look at more than the
trace id) leaves every call to the SDK.

Imported only with tracing on: it loads the SDK.
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)


class PrimedIds(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id can be chosen beforehand."""

    def __init__(self) -> None:
        self.primed = 0

    def generate_trace_id(self) -> int:
        if self.primed:
            trace_id, self.primed = self.primed, 0
            return trace_id
        return super().generate_trace_id()


class Roots:
    """Starts the root spans of one tracer (see the module's docstring)."""

    __slots__ = ("_bound", "_ids", "_limit")

    def __init__(self, ids: PrimedIds, bound: int) -> None:
        self._ids = ids
        self._bound = bound
        self._limit = TraceIdRatioBased.TRACE_ID_LIMIT

    @classmethod
    def of(cls, tracer: Any) -> Roots | None:
        """The roots of ``tracer``, or None where the decision is not the trace id's alone."""
        if not isinstance(tracer, Tracer) or not isinstance(tracer.id_generator, PrimedIds):
            return None
        sampler = tracer.sampler
        if isinstance(sampler, ParentBased):
            sampler = sampler._root  # what decides a call with no parent
        if type(sampler) is not TraceIdRatioBased:  # exactly: a subclass may decide otherwise
            return None
        return cls(tracer.id_generator, sampler.bound)

    def start(self) -> NonRecordingSpan | None:
        """A new trace's span when the sampler says "not sampled"; else None, with the trace id
        it sampled primed for the SDK's ``start_span``, which must come next."""
        trace_id = random.getrandbits(128)
        while not trace_id:
            trace_id = random.getrandbits(128)
        if trace_id & self._limit < self._bound:
            self._ids.primed = trace_id
            return None
        span_id = random.getrandbits(64)
        while not span_id:
            span_id = random.getrandbits(64)
        return NonRecordingSpan(SpanContext(trace_id, span_id, False, _NOT_SAMPLED))


# The global propagator last seen, and what it injects for a lone span: "traceparent" (W3C's
# trace context, with or without W3C baggage), "" (baggage alone: nothing), None (another).
_seen: list[Any] = [None, None]


def _w3c_kind(textmap: Any) -> str | None:
    parts = textmap._propagators if type(textmap) is CompositePropagator else [textmap]
    kinds = {type(part) for part in parts}
    if not kinds <= {TraceContextTextMapPropagator, W3CBaggagePropagator}:
        return None
    return "traceparent" if TraceContextTextMapPropagator in kinds else ""


def w3c_headers(span: Any) -> tuple[tuple[str, str], ...] | None:
    """The metadata the global propagator would inject for a context holding ``span`` alone,
    when that propagator is W3C's (the default, ``tracecontext,baggage``; a lone span
    carries no baggage); else None, and the caller injects. Formatted here, it costs a
    tenth of the propagator's ``inject`` (a context, two propagators, a setter)."""
    textmap = propagate.get_global_textmap()
    if textmap is not _seen[0]:
        _seen[:] = [textmap, _w3c_kind(textmap)]
    kind = _seen[1]
    if kind is None:
        return None
    context = span.get_span_context()
    if not kind or context == INVALID_SPAN_CONTEXT:  # the propagator's own test
        return ()
    parent = (kind, f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")
    if context.trace_state:
        return parent, ("tracestate", context.trace_state.to_header())
    return (parent,)
