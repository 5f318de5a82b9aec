"""The not-sampled root span made without the SDK (``rmllm_common.sampling``): the same
decisions, span contexts and propagated headers as the SDK's own path."""

from __future__ import annotations

import contextvars
import threading
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
from rmllm_common.sampling import PrimedIds, Unsampled, w3c_headers

CALLS = 4000


def tracer_of(sampler: Sampler, ids: Any = None) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=PrimedIds() if ids is None else ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.25, 1.0])
def test_roots_sample_the_configured_share_and_decide_as_the_sdk(rate: float) -> None:
    tracer, exporter = tracer_of(ParentBasedTraceIdRatio(rate))
    unsampled = Unsampled.of(tracer)
    assert unsampled is not None
    sampled_ids = []
    for _ in range(CALLS):
        span = unsampled.root()
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


def test_a_primed_trace_id_is_its_threads_alone() -> None:
    ids = PrimedIds()
    ids.primed = 0xABC
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(ids.generate_trace_id()))
    thread.start()
    thread.join()
    assert other[0] != 0xABC  # another thread's span gets a random id
    assert ids.generate_trace_id() == 0xABC and ids.primed == 0  # this thread's next one, once
    assert ids.generate_trace_id() != 0xABC


def test_new_traces_are_decided_here_only_where_the_trace_id_alone_decides() -> None:
    class Custom(TraceIdRatioBased):
        pass

    def decides_new_traces(sampler: Sampler, ids: Any = None) -> bool:
        tracer = tracer_of(sampler, ids)[0]
        unsampled = Unsampled.of(tracer)
        if unsampled is None:
            return False
        spans = [unsampled.root() for _ in range(50)]
        assert getattr(tracer.id_generator, "primed", 0) == 0  # at a ratio of 0, nothing is sampled
        return any(span is not None for span in spans)

    assert decides_new_traces(TraceIdRatioBased(0.0))
    assert decides_new_traces(ParentBased(TraceIdRatioBased(0.0)))
    for sampler in (ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON, Custom(0.0), ParentBased(Custom(0.0))):
        assert not decides_new_traces(sampler), sampler
    assert not decides_new_traces(TraceIdRatioBased(0.0), ids=RandomIdGenerator())
    assert Unsampled.of(trace.NoOpTracer()) is None
    # Neither new traces nor callers' traces: nothing to decide here.
    follows_no_one = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    for sampler in (ALWAYS_ON, ALWAYS_OFF, Custom(0.5), follows_no_one):
        assert Unsampled.of(tracer_of(sampler)[0]) is None, sampler


traceparents = st.builds(
    "{}-{}-{}-{}{}".format,
    st.sampled_from(["00", "01", "ff", "0g"]),
    st.one_of(st.just("0" * 32), st.integers(1, 2**128 - 1).map("{:032x}".format)),
    st.one_of(st.just("0" * 16), st.integers(1, 2**64 - 1).map("{:016x}".format)),
    st.integers(0, 255).map("{:02x}".format),
    st.sampled_from(["", "", "", "-extra", " ", "\t"]),
)


@given(traceparents, st.sampled_from([DEFAULT_ON, ParentBasedTraceIdRatio(0.5)]))
def test_a_callers_trace_not_sampled_gets_the_span_the_sdk_would_make(
    traceparent: str, sampler: Sampler
) -> None:
    tracer = tracer_of(sampler)[0]
    unsampled = Unsampled.of(tracer)
    assert unsampled is not None
    ours = unsampled.under(traceparent)
    theirs = tracer.start_span("call", context=propagate.extract({"traceparent": traceparent}))
    flags = int(traceparent[-2:], 16) if len(traceparent) == 55 else -1
    plain = traceparent[:3] == "00-" and len(traceparent) == 55 and "0" * 16 not in traceparent[36:52]
    plain = plain and traceparent[3:35] != "0" * 32
    if ours is None:
        # Left to the SDK: sampled, or a header not read here.
        assert not plain or flags & TraceFlags.SAMPLED
        return
    assert plain and not flags & TraceFlags.SAMPLED  # a plain header, not sampled: always decided here
    assert not theirs.is_recording()
    mine, sdk = ours.get_span_context(), theirs.get_span_context()
    assert (mine.trace_id, mine.trace_flags, mine.trace_state, mine.is_remote) == (
        sdk.trace_id,
        sdk.trace_flags,
        sdk.trace_state,
        sdk.is_remote,
    )
    assert mine.span_id != 0 and mine.span_id != int(traceparent[36:52], 16)


def test_callers_traces_are_read_here_only_with_the_w3c_propagator(global_textmap: None) -> None:
    unsampled = Unsampled.of(tracer_of(DEFAULT_ON)[0])
    assert unsampled is not None
    header = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-02"
    assert unsampled.under(header) is not None
    propagate.set_global_textmap(B3Like())  # the SDK would not read traceparent at all
    assert unsampled.under(header) is None


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
    observer._tracer, observer._unsampled = tracer, Unsampled.of(tracer)  # a provider of this test's own
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
