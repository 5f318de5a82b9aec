"""The not-sampled root span made without the SDK (``rmllm_common.sampling``): the same
decisions, span contexts and propagated headers as the SDK's own path."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rmllm_common.observe import Observer
from rmllm_common.sampling import PrimedIds, Roots, w3c_headers

CALLS = 4000


def tracer_of(sampler: Sampler, ids: Any = None) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=PrimedIds() if ids is None else ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.25, 1.0])
def test_roots_sample_the_configured_share_and_decide_as_the_sdk(rate: float) -> None:
    tracer, exporter = tracer_of(ParentBasedTraceIdRatio(rate))
    roots = Roots.of(tracer)
    assert roots is not None
    sampled_ids = []
    for _ in range(CALLS):
        span = roots.start()
        if span is None:  # sampled: the SDK makes the span, with the trace id that was drawn
            drawn = tracer.id_generator.primed
            real = tracer.start_span("call")
            assert real.is_recording() and real.get_span_context().trace_id == drawn
            assert tracer.id_generator.primed == 0
            real.end()
            sampled_ids.append(drawn)
            continue
        context = span.get_span_context()
        assert not span.is_recording() and context.is_valid and not context.is_remote
        assert context.trace_flags == TraceFlags.RANDOM_TRACE_ID  # as the SDK flags it: random, not sampled
        # The SDK's sampler says the same of that trace id.
        decision = tracer.sampler.should_sample(None, context.trace_id, "call").decision
        assert decision == Decision.DROP
    assert [span.context.trace_id for span in exporter.get_finished_spans()] == sampled_ids
    spread = 5 * (rate * (1 - rate) / CALLS) ** 0.5
    assert abs(len(sampled_ids) / CALLS - rate) <= spread


def test_roots_apply_only_where_the_trace_id_alone_decides() -> None:
    class Custom(TraceIdRatioBased):
        pass

    assert Roots.of(tracer_of(TraceIdRatioBased(0.5))[0]) is not None
    assert Roots.of(tracer_of(ParentBased(TraceIdRatioBased(0.5)))[0]) is not None
    for sampler in (ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON, Custom(0.5), ParentBased(Custom(0.5))):
        assert Roots.of(tracer_of(sampler)[0]) is None, sampler
    assert Roots.of(tracer_of(TraceIdRatioBased(0.5), ids=RandomIdGenerator())[0]) is None
    assert Roots.of(trace.NoOpTracer()) is None


class B3Like(TextMapPropagator):
    """Another propagation format: the headers must come from its own ``inject``."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
        setter.set(carrier, "b3", "x")

    @property
    def fields(self) -> set[str]:
        return {"b3"}


@pytest.fixture
def global_textmap() -> Iterator[None]:
    before = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(before)


def injected(span: Any) -> tuple[tuple[str, str], ...]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


span_contexts = st.builds(
    SpanContext,
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.integers(0, 255).map(TraceFlags),
    trace_state=st.one_of(
        st.none(),
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9_\-]{0,8}", fullmatch=True),
            st.from_regex(r"[!-+\--<>-~]{1,8}", fullmatch=True),
            max_size=3,
        ).map(lambda entries: TraceState(list(entries.items()))),
    ),
)


@given(span_contexts)
def test_w3c_headers_are_what_the_default_propagator_injects(context: SpanContext) -> None:
    span = NonRecordingSpan(context)
    assert w3c_headers(span) == injected(span)


def test_w3c_headers_follow_the_global_propagator(global_textmap: None) -> None:
    span = NonRecordingSpan(SpanContext(0xAB, 0xCD, False, TraceFlags(TraceFlags.RANDOM_TRACE_ID)))
    assert w3c_headers(span) == (("traceparent", f"00-{0xAB:032x}-{0xCD:016x}-02"),)
    for textmap, headers in (
        (TraceContextTextMapPropagator(), injected(span)),
        (CompositePropagator([W3CBaggagePropagator()]), ()),
        (W3CBaggagePropagator(), ()),
        (B3Like(), None),  # not W3C's: the caller injects with the propagator itself
        (CompositePropagator([TraceContextTextMapPropagator(), B3Like()]), None),
    ):
        propagate.set_global_textmap(textmap)
        assert w3c_headers(span) == headers, textmap


class ServicerContext:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def test_an_observed_call_that_is_not_sampled_is_not_attached_and_one_sampled_is() -> None:
    contextvars.copy_context().run(observed_calls)  # as gRPC runs each call, in a context of its own


def observed_calls() -> None:
    tracer, exporter = tracer_of(ParentBasedTraceIdRatio(0.5))
    observer = Observer("llm", tracing=True)
    observer._tracer, observer._roots = tracer, Roots.of(tracer)  # a provider of this test's own
    before = otel_context.get_current()
    traced = []
    servicer_context: Any = ServicerContext()
    for _ in range(200):
        call = observer.begin("/pkg.Svc/Method", servicer_context, False)
        assert call.span is not None and call.trace_id == format(
            call.span.get_span_context().trace_id, "032x"
        )
        if call.span.is_recording():
            assert trace.get_current_span() is call.span
            traced.append(call.trace_id)
        else:
            assert otel_context.get_current() is before
        observer.end(call, grpc.StatusCode.OK, "")
        assert otel_context.get_current() is before
    assert 0 < len(traced) < 200
    assert [format(span.context.trace_id, "032x") for span in exporter.get_finished_spans()] == traced
