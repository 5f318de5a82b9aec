"""The LLM service's observability, in process: the request id on every answer, the
call's JSON log line, the Prometheus metrics each outcome records, and the GenAI span
(message contents only on opt-in)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from realmultillm.vault.v1 import vault_pb2
from testkit.llm_harness import LLMHarness, auth, chat_request, llm_harness, stream_request
from testkit.llm_scripted import answer

from llm_service import metrics, telemetry
from llm_service.accounting import CallRecord
from llm_service.usage import UsageReporter
from rmllm_common import errors
from rmllm_common.logs import JsonFormatter
from rmllm_common.observe import _SPAN_NAMES_KEPT as OBSERVE_SPAN_NAMES_KEPT
from rmllm_common.observe import Call, Observer
from rmllm_common.telemetry import GENAI_BUCKETS, TelemetrySettings, set_metric_producer

TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
# build_server turns recording on; only `serve` opens the listener.
METRICS = {"RMLLM_METRICS_LISTEN": "127.0.0.1:0"}
TRACING = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_METRICS_EXPORTER": "none"}


def trailing_ids(metadata: object) -> list[str]:
    return [str(v) for k, v in (metadata or ()) if k == "x-request-id"]  # type: ignore[attr-defined]


async def test_request_id_is_returned_on_success_and_on_error(llm: LLMHarness) -> None:
    call = llm.stub.Chat(chat_request(), metadata=(*auth(), ("x-request-id", "req-7")))
    await call
    assert trailing_ids(await call.trailing_metadata()) == ["req-7"]
    stream = llm.stub.StreamChat(stream_request(), metadata=(*auth(), ("x-request-id", "req-8")))
    assert [m.WhichOneof("event") async for m in stream][-1] == "done"
    assert trailing_ids(await stream.trailing_metadata()) == ["req-8"]
    # An invalid id is replaced by a generated one, and errors carry it too.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(provider="nope"), metadata=(*auth(), ("x-request-id", "bad id!")))
    [generated] = trailing_ids(caught.value.trailing_metadata())
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    assert llm.vault.calls[0].metadata["x-request-id"] == "req-7"


async def test_one_json_log_line_per_finished_call(llm: LLMHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rmllm.calls")
    llm.adapter.scripts = [answer("Hel", "lo", input_tokens=11, output_tokens=7)]
    await llm.stub.Chat(
        chat_request(), metadata=(*auth(), ("x-request-id", "req-9"), ("traceparent", TRACEPARENT))
    )
    llm.adapter.scripts = [[errors.ProviderKeyInvalid("401", provider="openai")]]
    with pytest.raises(grpc.aio.AioRpcError):
        await llm.stub.Chat(chat_request(), metadata=(*auth(), ("x-request-id", "req-10")))
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "rmllm.calls" and getattr(r, "service", "") == "llm"
    ]
    ok, failed = lines
    assert ok["request_id"] == "req-9" and ok["trace_id"] == "ab" * 16
    assert (ok["method"], ok["provider"], ok["model"], ok["code"], ok["reason"]) == (
        "Chat",
        "openai",
        "gpt-4o-mini",
        "OK",
        "",
    )
    assert (ok["usage_input"], ok["usage_output"]) == (11, 7)
    assert 0 <= ok["ttft_seconds"] <= ok["latency_seconds"]
    assert (failed["request_id"], failed["code"], failed["reason"]) == (
        "req-10",
        "FAILED_PRECONDITION",
        "PROVIDER_KEY_INVALID",
    )
    assert "usage_input" not in failed and "ttft_seconds" not in failed


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        if family.name.startswith("rmllm_llm_")
        for s in family.samples
    }


def delta(before: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return snapshot().get(key, 0.0) - before.get(key, 0.0)


async def test_every_outcome_is_counted() -> None:
    env = {
        **METRICS,
        "RMLLM_CHAT_RATE_PER_MINUTE": "1",
        "RMLLM_CHAT_BURST": "4",
        "RMLLM_CREDENTIAL_CACHE_SECONDS": "5",
    }
    async with llm_harness(env) as llm:
        await llm.until(lambda: llm.cache.enabled)  # the cache works once the watch stream is in sync
        before = snapshot()
        unavailable = errors.ProviderUnavailable("503", provider="openai")
        llm.adapter.scripts = [
            answer("a", "b", "c", input_tokens=10, output_tokens=5),
            answer("x", input_tokens=3, output_tokens=2),
            [unavailable],
            answer("y", input_tokens=1, output_tokens=1),
            answer("z", input_tokens=1, output_tokens=1),
        ]
        await llm.stub.Chat(chat_request(), metadata=auth())
        assert [m.WhichOneof("event") async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
        await llm.stub.Chat(chat_request(), metadata=auth())  # one retry, then "y"
        await llm.stub.Chat(chat_request(model="my-finetune"), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError):  # past the burst of 4
            await llm.stub.Chat(chat_request(), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request(provider="nope"), metadata=auth())

    def requests(method: str, model: str, code: str, reason: str = "", provider: str = "openai") -> float:
        labels = {"method": method, "provider": provider, "model": model, "code": code, "reason": reason}
        return delta(before, "rmllm_llm_requests_total", **labels)

    assert requests("Chat", "gpt-4o-mini", "OK") == 2
    assert requests("StreamChat", "gpt-4o-mini", "OK") == 1
    assert requests("Chat", "other", "OK") == 1  # a model the registry does not know is no label value
    # Refused before the vault call (issue 13: a known caller past the limit costs no round
    # trip), so before the model, which may be the caller's stored default, is known.
    assert requests("Chat", "none", "RESOURCE_EXHAUSTED", "RATE_LIMITED") == 1
    assert requests("Chat", "none", "INVALID_ARGUMENT", "UNKNOWN_PROVIDER", provider="none") == 1
    assert delta(before, "rmllm_llm_refusals_total", reason="RATE_LIMITED") == 1
    assert delta(before, "rmllm_llm_provider_retries_total", provider="openai") == 1
    tokens = {
        kind: delta(before, "rmllm_llm_tokens_total", provider="openai", model="gpt-4o-mini", type=kind)
        for kind in ("input", "output")
    }
    assert tokens == {"input": 10 + 3 + 1, "output": 5 + 2 + 1}
    ttft = delta(
        before, "rmllm_llm_time_to_first_token_seconds_count", provider="openai", model="gpt-4o-mini"
    )
    assert ttft == 3
    assert delta(before, "rmllm_llm_cost_usd_total", provider="openai", model="gpt-4o-mini") > 0
    assert delta(before, "rmllm_llm_open_streams") == 0
    assert delta(before, "rmllm_llm_credential_cache_lookups_total", result="miss") == 1
    # The refused call is refused before it looks (its caller is known): 3 hits, not 4.
    assert delta(before, "rmllm_llm_credential_cache_lookups_total", result="hit") == 3
    vault = delta(
        before, "rmllm_llm_vault_call_duration_seconds_count", method="ResolveCredentials", code="OK"
    )
    assert vault == 1


@pytest.fixture(autouse=True)
def no_leftover_producer() -> Iterator[None]:
    """A GenAIHooks made here registers the process's GenAI metric producer: unregister it after."""
    yield
    set_metric_producer("gen_ai", None)


@pytest.fixture(scope="module")
def exported() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, keeping spans in memory (set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_genai_span_and_message_contents_only_on_opt_in(exported: InMemorySpanExporter) -> None:
    async with llm_harness(TRACING) as llm:
        exported.clear()
        llm.adapter.scripts = [answer("Hello", "!", input_tokens=4, output_tokens=2)]
        await llm.stub.Chat(chat_request("Hi there"), metadata=(*auth(), ("traceparent", TRACEPARENT)))
    spans = by_name(exported.get_finished_spans())
    server = spans["realmultillm.llm.v1.LLMService/Chat"]
    chat = spans["chat gpt-4o-mini"]
    resolve = spans["realmultillm.vault.v1.VaultService/ResolveCredentials"]
    assert format(server.context.trace_id, "032x") == "ab" * 16  # the caller's trace continues
    assert chat.parent is not None and chat.parent.span_id == server.context.span_id
    assert resolve.parent is not None and resolve.parent.span_id == server.context.span_id
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 4
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert not any("messages" in key for key in attributes)

    async with llm_harness({**TRACING, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}) as llm:
        exported.clear()
        llm.adapter.scripts = [answer("Hello", "!")]
        await llm.stub.Chat(chat_request("Hi there"), metadata=auth())
        llm.adapter.scripts = [[errors.ProviderKeyInvalid("401", provider="openai")]]
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request("Hi again"), metadata=auth())
    ok, failed = [s for s in exported.get_finished_spans() if s.name == "chat gpt-4o-mini"]
    attributes = dict(ok.attributes or {})
    assert json.loads(str(attributes["gen_ai.input.messages"]))[0]["parts"][0]["content"] == "Hi there"
    assert json.loads(str(attributes["gen_ai.output.messages"]))[0]["parts"][0]["content"] == "Hello!"
    assert (failed.attributes or {})["error.type"] == "PROVIDER_KEY_INVALID"
    assert failed.status.status_code == trace.StatusCode.ERROR


class CountingTracer:
    """The LLM service's tracer, counting the spans it starts."""

    def __init__(self, tracer: object) -> None:
        self.tracer = tracer
        self.started: list[str] = []

    def start_span(self, name: str, **options: object) -> object:
        self.started.append(name)
        return self.tracer.start_span(name, **options)  # type: ignore[attr-defined]


async def test_a_call_not_sampled_makes_no_spans_but_tells_the_vault(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_sampled = TRACEPARENT[:-2] + "00"  # the caller's trace, not sampled: ours follows
    async with llm_harness(TRACING) as llm:
        counting = CountingTracer(telemetry._tracer)
        monkeypatch.setattr(telemetry, "_tracer", counting)
        exported.clear()
        await llm.stub.Chat(chat_request(), metadata=(*auth(), ("traceparent", not_sampled)))
        assert counting.started == [] and exported.get_finished_spans() == ()
        traceparent = llm.vault.calls[-1].metadata["traceparent"]
        assert traceparent.startswith("00-" + "ab" * 16 + "-") and traceparent.endswith("-00")
        # Sampled: the vault's parent is the client span of the vault call.
        await llm.stub.Chat(chat_request(), metadata=(*auth(), ("traceparent", TRACEPARENT)))
        resolve_name = "realmultillm.vault.v1.VaultService/ResolveCredentials"
        assert counting.started == [resolve_name, "chat gpt-4o-mini"]
        resolve = by_name(exported.get_finished_spans())[resolve_name]
        traceparent = llm.vault.calls[-1].metadata["traceparent"]
        assert traceparent == f"00-{'ab' * 16}-{resolve.context.span_id:016x}-01"


class FakeServicerContext:
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata = tuple(metadata)

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self.metadata

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def test_server_spans_restore_the_context_and_keep_few_method_names(exported: InMemorySpanExporter) -> None:
    # In a context of its own, as gRPC runs each call: the current call is left set after it.
    contextvars.copy_context().run(server_spans_restore_the_context_and_keep_few_method_names, exported)


def server_spans_restore_the_context_and_keep_few_method_names(exported: InMemorySpanExporter) -> None:
    observer = Observer("llm", tracing=True)
    before = otel_context.get_current()
    not_sampled = TRACEPARENT[:-2] + "00"
    for traceparent in (TRACEPARENT, not_sampled):
        exported.clear()
        context: Any = FakeServicerContext([("traceparent", traceparent)])
        call = observer.begin("/pkg.Svc/Method", context, False)
        assert call.span is not None and call.trace_id == "ab" * 16
        if traceparent == TRACEPARENT:
            assert trace.get_current_span() is call.span
        else:  # not sampled: made without the SDK (rmllm_common.sampling) and not attached
            assert not call.span.is_recording() and otel_context.get_current() is before
        observer.end(call, grpc.StatusCode.INTERNAL, "BOOM")
        assert otel_context.get_current() is before  # detached, sampled or not
        spans = exported.get_finished_spans()
        if traceparent == TRACEPARENT:
            (span,) = spans
            assert span.name == "pkg.Svc/Method" and span.attributes == {
                "rpc.system": "grpc",
                "rpc.service": "pkg.Svc",
                "rpc.method": "Method",
                "rpc.grpc.status_code": 13,
                "error.type": "BOOM",
            }
        else:
            assert spans == ()
    # Each method's span name and attributes are built once, for a bounded number of paths
    # (a caller chooses the path of an unknown method).
    no_metadata: Any = FakeServicerContext([])
    for n in range(OBSERVE_SPAN_NAMES_KEPT + 50):
        observer.end(observer.begin(f"/pkg.Svc/M{n}", no_metadata, False), grpc.StatusCode.OK, "")
    assert len(observer._spans) == OBSERVE_SPAN_NAMES_KEPT


async def test_http_span_of_a_provider_call(exported: InMemorySpanExporter) -> None:
    url = "https://user:pw@gen.example:8443/v1/models/m:streamGenerateContent?alt=sse&key=SECRET"
    async with llm_harness(TRACING):
        exported.clear()
        with trace.get_tracer("test").start_as_current_span("parent") as parent:
            telemetry.end_http_span(telemetry.http_span("POST", url), 429)
            telemetry.end_http_span(telemetry.http_span("POST", url), None, TimeoutError())
        unsampled = trace.NonRecordingSpan(
            trace.SpanContext(parent.get_span_context().trace_id, 1, is_remote=True)
        )
        with trace.use_span(unsampled):
            assert telemetry.http_span("POST", url) is None
    refused, failed = [s for s in exported.get_finished_spans() if s.name == "POST"]
    assert refused.parent is not None and refused.parent.span_id == parent.get_span_context().span_id
    assert refused.kind == trace.SpanKind.CLIENT
    assert dict(refused.attributes or {}) == {
        "http.request.method": "POST",
        "server.address": "gen.example",
        "server.port": 8443,
        "url.full": "https://gen.example:8443/v1/models/m:streamGenerateContent",
        "http.response.status_code": 429,
        "error.type": "429",
    }
    assert refused.status.status_code == trace.StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "TimeoutError"
    assert "http.response.status_code" not in (failed.attributes or {})
    telemetry.setup(TelemetrySettings())
    assert telemetry.http_span("POST", url) is None  # tracing off


def genai_calls() -> list[tuple[Call, grpc.StatusCode, str, float]]:
    """Finished calls of every shape the GenAI metrics tell apart."""

    def call(output_tokens: int, response_model: str = "gpt-4o-mini-2024-07-18") -> Call:
        done = Call("Chat", "r", 0.0, False, provider="openai", model="gpt-4o-mini")
        done.response_model, done.usage_seen, done.first_token_seconds = response_model, True, 0.25
        done.input_tokens, done.output_tokens = 10, output_tokens
        return done

    return [
        (call(5), grpc.StatusCode.OK, "", 1.25),
        (call(7), grpc.StatusCode.OK, "", 0.75),
        (call(1), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", 2.0),
        (Call("Chat", "r", 0.0, False, provider="google", model="g"), grpc.StatusCode.OK, "", 0.5),
        (Call("ListModels", "r", 0.0, False, provider="openai"), grpc.StatusCode.OK, "", 0.1),
    ]


def sdk_points(data: Any) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    return {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


def test_genai_metrics_of_each_call() -> None:
    hooks = telemetry.GenAIHooks()
    for call in genai_calls():
        hooks.finished(*call)
    metrics = hooks.produce(delta=False)
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point
        for metric in metrics
        for point in metric.data.data_points
    }
    ok = (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
    )
    failed = tuple(sorted((*ok, ("error.type", "PROVIDER_UNAVAILABLE"))))
    google = (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "gcp.gemini"),
        ("gen_ai.request.model", "g"),
    )
    output = tuple(sorted((*ok, ("gen_ai.token.type", "output"))))
    counts = {key: point.count for key, point in points.items()}
    assert counts == {
        ("gen_ai.client.operation.duration", ok): 2,
        ("gen_ai.client.operation.duration", failed): 1,
        ("gen_ai.client.operation.duration", google): 1,
        ("gen_ai.client.token.usage", tuple(sorted((*ok, ("gen_ai.token.type", "input"))))): 2,
        ("gen_ai.client.token.usage", output): 2,
        ("gen_ai.client.token.usage", tuple(sorted((*failed, ("gen_ai.token.type", "input"))))): 1,
        ("gen_ai.client.token.usage", tuple(sorted((*failed, ("gen_ai.token.type", "output"))))): 1,
        ("gen_ai.server.time_to_first_token", ok): 2,
        ("gen_ai.server.time_to_first_token", failed): 1,
        ("gen_ai.server.time_per_output_token", ok): 2,  # one output token: no time per token
    }
    assert points[("gen_ai.client.operation.duration", ok)].sum == 2.0
    assert points[("gen_ai.client.token.usage", output)].sum == 12
    assert points[("gen_ai.server.time_per_output_token", ok)].sum == 0.25 + 1 / 12
    assert {metric.data.aggregation_temporality.name for metric in metrics} == {"CUMULATIVE"}
    # Deltas: what came since the last export, then nothing.
    assert {m.name for m in hooks.produce(delta=True)} == {m.name for m in metrics}
    assert hooks.produce(delta=True) == []


def test_genai_metrics_are_what_the_sdk_would_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same calls recorded through the SDK's histograms, with the spec's buckets: the same
    points, counts, sums, buckets, min and max."""
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    views = [
        View(instrument_name=n, aggregation=ExplicitBucketHistogramAggregation(b))
        for n, b in GENAI_BUCKETS.items()
    ]
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader], views=views).get_meter("llm_service")
    instruments = [meter.create_histogram(name) for name in GENAI_BUCKETS]
    hooks = telemetry.GenAIHooks()
    ours_only = hooks._add

    def both(metric: int, key: object, attributes: dict[str, Any], value: float) -> None:
        instruments[metric].record(value, attributes)
        ours_only(metric, key, attributes, value)

    monkeypatch.setattr(hooks, "_add", both)
    for call in genai_calls():
        hooks.finished(*call)
    ours = {
        (metric.name, tuple(sorted(point.attributes.items()))): point
        for metric in hooks.produce(delta=False)
        for point in metric.data.data_points
    }
    sdk = sdk_points(reader.get_metrics_data())
    assert set(ours) == set(sdk)
    for key, point in sdk.items():
        mine = ours[key]
        assert (mine.count, mine.sum, list(mine.bucket_counts), mine.min, mine.max) == (
            point.count,
            point.sum,
            list(point.bucket_counts),
            point.min,
            point.max,
        ), key
        assert tuple(mine.explicit_bounds) == tuple(point.explicit_bounds)


async def test_usage_reporter_depth_and_drops_are_metrics() -> None:
    metrics.enable()
    before = snapshot()
    refused = {"on": False}

    async def send(
        batches: Sequence[Sequence[vault_pb2.UsageRecord]], timeout: float
    ) -> vault_pb2.ReportUsageResponse:
        if refused["on"]:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return vault_pb2.ReportUsageResponse(accepted=sum(len(b) for b in batches))

    reporter = UsageReporter(send, interval=0.01, batch_size=100, max_buffer=3)
    for i in range(5):  # two past the buffer of 3
        record = CallRecord("Chat", False, time.time(), time.perf_counter(), user_id="u", token_id="t")
        record.request_id, record.status_code, record.ended = f"r{i}", "OK", time.perf_counter()
        reporter.submit(record)
    assert delta(before, "rmllm_llm_usage_records_dropped_total", reason="overflow") == 2
    refused["on"] = True
    reporter.start()
    deadline = time.monotonic() + 10
    while reporter.buffered:
        assert time.monotonic() < deadline, "the refused records were never dropped"
        await asyncio.sleep(0.01)
    assert delta(before, "rmllm_llm_usage_records_dropped_total", reason="rejected") == 3
    assert snapshot()[("rmllm_llm_usage_queue_depth", ())] == 0
    await reporter.close(0.1)
