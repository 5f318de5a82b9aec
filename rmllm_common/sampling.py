"""The span of a call that is not sampled, made without the OpenTelemetry SDK's ``start_span``.

With tracing on at a ratio (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, 1 % say),
99 calls in 100 start a server span that records nothing, and the SDK's ``start_span``
for it (ids, the sampler's result object, trace flags, a span context, a no-op span, the
context attached and detached) was most of what tracing cost such a call
(docs/PERFORMANCE.md). Two kinds of call are decided here first, where the decision
needs nothing the SDK would look at:

- **A new trace** (the caller sent no trace context): a ratio sampler decides on the
  trace id alone. "Not sampled": the span context is made here, the one the SDK would
  make (a random trace id, a random span id, flags "random trace id, not sampled", no
  trace state). "Sampled": the SDK makes the span as always, with that same trace id
  (``PrimedIds``), so the share of calls sampled is the configured ratio.
- **A caller's trace that is not sampled** (``traceparent`` with the sampled flag off,
  as the LLM service sends the vault 99 times in 100): a ``ParentBased`` sampler with
  its default for such a parent (``ALWAYS_OFF``) follows it. The span context is the
  SDK's: the caller's trace id, a random span id, the caller's "random trace id" flag.
  Only for a header the W3C propagator reads the same way (version 00, nothing after
  the flags, non-zero ids) and no ``tracestate``; anything else goes to the SDK.

Used only where that is exact: the SDK's tracer; for new traces, ``PrimedIds`` as its id
generator (the one ``rmllm_common.telemetry`` installs) and a ``TraceIdRatioBased``
sampler, alone or as a ``ParentBased`` one's root; for callers' traces, a ``ParentBased``
sampler and W3C's propagator. Any other sampler (a custom one may look at more than the
trace id) leaves every call to the SDK.

Imported only with tracing on: it loads the SDK.
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)
_NOT_SAMPLED_PLAIN = TraceFlags(TraceFlags.DEFAULT)
# A traceparent the W3C propagator reads as written: version 00, nothing around it.
_PLAIN_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class PrimedIds(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id can be chosen beforehand (per
    thread: a span started on another thread meanwhile does not take it)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def primed(self) -> int:
        """The trace id the next ``generate_trace_id`` of this thread returns (0: a random one)."""
        return int(getattr(self._local, "trace_id", 0))

    @primed.setter
    def primed(self, trace_id: int) -> None:
        self._local.trace_id = trace_id

    def generate_trace_id(self) -> int:
        local = self._local
        trace_id = getattr(local, "trace_id", 0)
        if trace_id:
            local.trace_id = 0
            return int(trace_id)
        return super().generate_trace_id()


class Unsampled:
    """Makes the spans of one tracer that are not sampled (see the module's docstring)."""

    __slots__ = ("_bound", "_follows_callers", "_ids", "_limit")

    def __init__(self, ids: PrimedIds | None, bound: int | None, follows_callers: bool) -> None:
        self._ids = ids
        self._bound = bound  # None: new traces go to the SDK
        self._follows_callers = follows_callers
        self._limit = TraceIdRatioBased.TRACE_ID_LIMIT

    @classmethod
    def of(cls, tracer: Any) -> Unsampled | None:
        """``tracer``'s, or None where no decision can be taken before the SDK's."""
        if not isinstance(tracer, Tracer):
            return None
        sampler = tracer.sampler
        root = sampler._root if isinstance(sampler, ParentBased) else sampler  # decides new traces
        ids = tracer.id_generator
        primed, bound = None, None
        # Exactly TraceIdRatioBased (a subclass may decide otherwise), and our id generator.
        exact = type(root) is TraceIdRatioBased
        if exact and isinstance(root, TraceIdRatioBased) and isinstance(ids, PrimedIds):
            primed, bound = ids, root.bound
        follows = isinstance(sampler, ParentBased) and sampler._remote_parent_not_sampled is ALWAYS_OFF
        if bound is None and not follows:
            return None
        return cls(primed, bound, follows)

    def root(self) -> NonRecordingSpan | None:
        """A new trace's span when the sampler says "not sampled"; else None, and when it says
        "sampled", the trace id primed for the SDK's ``start_span``, which must come next."""
        if self._bound is None or self._ids is None:
            return None
        trace_id = random.getrandbits(128)
        while not trace_id:
            trace_id = random.getrandbits(128)
        if trace_id & self._limit < self._bound:
            self._ids.primed = trace_id
            return None
        return NonRecordingSpan(SpanContext(trace_id, _span_id(), False, _NOT_SAMPLED))

    def under(self, traceparent: str) -> NonRecordingSpan | None:
        """The span under a caller's ``traceparent`` (with no ``tracestate``) when that trace is
        not sampled; else None, for the SDK."""
        if not self._follows_callers or _seen_kind() != "traceparent":
            return None
        match = _PLAIN_TRACEPARENT.fullmatch(traceparent)
        if match is None:
            return None
        trace_id, parent_id, flags = (int(group, 16) for group in match.groups())
        if flags & TraceFlags.SAMPLED or not trace_id or not parent_id:
            return None
        kept = _NOT_SAMPLED if flags & TraceFlags.RANDOM_TRACE_ID else _NOT_SAMPLED_PLAIN
        return NonRecordingSpan(SpanContext(trace_id, _span_id(), False, kept))


def _span_id() -> int:
    span_id = random.getrandbits(64)
    while not span_id:
        span_id = random.getrandbits(64)
    return span_id


# The global propagator last seen, and what it injects for a lone span: "traceparent" (W3C's
# trace context, with or without W3C baggage), "" (baggage alone: nothing), None (another).
_seen: list[Any] = [None, None]


def _w3c_kind(textmap: Any) -> str | None:
    parts = textmap._propagators if type(textmap) is CompositePropagator else [textmap]
    kinds = {type(part) for part in parts}
    if not kinds <= {TraceContextTextMapPropagator, W3CBaggagePropagator}:
        return None
    return "traceparent" if TraceContextTextMapPropagator in kinds else ""


def _seen_kind() -> str | None:
    textmap = propagate.get_global_textmap()
    if textmap is not _seen[0]:
        _seen[:] = [textmap, _w3c_kind(textmap)]
    kind: str | None = _seen[1]
    return kind


def w3c_headers(span: Any) -> tuple[tuple[str, str], ...] | None:
    """The metadata the global propagator would inject for a context holding ``span`` alone,
    when that propagator is W3C's (the default, ``tracecontext,baggage``; a lone span
    carries no baggage); else None, and the caller injects. Formatted here, it costs a
    tenth of the propagator's ``inject`` (a context, two propagators, a setter)."""
    kind = _seen_kind()
    if kind is None:
        return None
    context = span.get_span_context()
    if not kind or context == INVALID_SPAN_CONTEXT:  # the propagator's own test
        return ()
    parent = (kind, f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}")
    if context.trace_state:
        return parent, ("tracestate", context.trace_state.to_header())
    return (parent,)
