"""``python -m bench --telemetry``: the LLM service's CPU per Chat with metrics and tracing off and on.

LLM services run side by side against the same vault and fake provider: as shipped
(no ``--metrics-listen``, no ``OTEL_*``), with Prometheus metrics on, with
Prometheus plus OpenTelemetry traces and metrics exported over OTLP to a local
receiver (``tests/testkit/otlp.py``) with every trace sampled, and the same with 1 %
of traces sampled (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``). With
``--baseline-src DIR`` (a checkout without the observability hooks, e.g. ``git
worktree add /tmp/base <commit>``) its LLM service runs too, for the cost with
everything off. Chat runs alternate between the configurations (so drift on a
shared machine hits all alike) and each LLM process's CPU time per request is read
from ``/proc`` around each run. In process it also times the primitives the hooks use
and, in a fresh process per sampling setting, one Chat's whole telemetry work
(``otel_chat_costs``: the server, vault, ``chat {model}`` and HTTP spans, their OTLP
encoding, the GenAI histograms). The figures are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.plan import Plan
from bench.runner import Session, Target
from bench.stack import ROOT, raise_fd_limit

CONCURRENCY = 16
ROUNDS = 10  # this noisy: a round's CPU per Chat varies by 10 % on a shared machine


def run_telemetry(plan: Plan, say: Callable[[str], None], baseline: Path | None = None) -> dict[str, Any]:
    """Alternating Chat runs against LLM services with telemetry off and on."""
    sys.path.insert(0, str(ROOT / "tests"))
    from testkit.otlp import Receiver

    raise_fd_limit()
    receiver = Receiver()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    }
    prometheus = {"RMLLM_METRICS_LISTEN": "127.0.0.1:0"}
    sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    configs: dict[str, dict[str, str]] = {
        "prometheus": prometheus,
        "prometheus_otel_all": {**prometheus, **otel},
        "prometheus_otel_1pct": {**prometheus, **otel, **sampled},
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-") as tmp:
        session = Session(plan, Path(tmp), say)
        try:
            session.start()
            off = session.targets["gateway"]
            targets = [Target("off", off.job, off.services)]
            launches = [(name, env, ROOT) for name, env in configs.items()]
            if baseline is not None:
                launches.insert(0, ("baseline", {}, baseline))
            for name, env, source in launches:
                proc = session.stack.start_llm(f"llm-{name}", extra_env=env, source=source)
                targets.append(
                    Target(name, {**off.job, "address": proc.address}, {"llm": [proc.pid], **_vault(off)})
                )
            for target in targets:
                session.measure(target, "chat", CONCURRENCY, requests=plan.warmup_requests, seconds=10.0)
            for round_no in range(ROUNDS):
                for target in targets if round_no % 2 == 0 else targets[::-1]:  # order evens out
                    row = session.measure(target, "chat", CONCURRENCY)
                    row["config"] = target.name
                    row["round"] = round_no
                    rows.append(row)
                    say(
                        f"round {round_no} {target.name:<22} llm cpu {row['cpu_llm_ms']:.3f} ms/req "
                        f"{row['rps']:7.0f}/s errors {row['errors']}"
                    )
        finally:
            session.stop()
            receiver.stop()
    medians = {
        t.name: statistics.median(r["cpu_llm_ms"] for r in rows if r["config"] == t.name) for t in targets
    }
    base = medians["off"]
    summary = {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "llm_cpu_ms_per_chat": medians,
        "increase_over_off_pct": {name: 100 * (value / base - 1) for name, value in medians.items()},
        "paired_increase_over_off_pct": paired_increase(rows),
        "spans_received": len(receiver.spans),
        "primitive_costs_us": primitive_costs(),
        "otel_chat_costs_us": otel_chat_costs(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"runs": rows, "summary": summary}


def paired_increase(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per configuration, the median over rounds of its CPU per Chat over "off"'s in the same
    round, in %: drift on a shared machine (which moves whole rounds) cancels out."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["config"]] = row["cpu_llm_ms"]
    ratios: dict[str, list[float]] = {}
    for cpu in by_round.values():
        for name, value in cpu.items():
            ratios.setdefault(name, []).append(value / cpu["off"])
    return {name: 100 * (statistics.median(values) - 1) for name, values in ratios.items()}


def _vault(target: Target) -> dict[str, list[int]]:
    return {"vault": target.services["vault"]}


def primitive_costs(repeat: int = 20_000) -> dict[str, float]:
    """Microseconds of CPU per operation the telemetry hooks perform, measured in a fresh
    process (its logging set up as a service's, ``_primitive_costs``)."""
    costs: dict[str, float] = _in_fresh_process(f"_primitive_costs({repeat})")
    return costs


def _in_fresh_process(call: str) -> Any:
    """The JSON that ``bench.telemetry``'s ``call`` prints last, run in a new Python process
    without the caller's ``OTEL_*`` settings."""
    out = subprocess.run(
        [sys.executable, "-c", f"import bench.telemetry as this; this.{call}"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _primitive_costs(repeat: int) -> None:
    """Print ``primitive_costs`` as JSON, measured in this process."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
    from prometheus_client import CollectorRegistry, Histogram

    from rmllm_common import logs

    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    }
    histogram = (
        MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench").create_histogram("h")
    )
    observed = Histogram("h_seconds", "h", ["a", "b"], registry=CollectorRegistry()).labels("a", "b")
    sampled = TracerProvider().get_tracer("bench")
    unsampled = TracerProvider(sampler=ParentBasedTraceIdRatio(0.0)).get_tracer("bench")

    def span(tracer: Any) -> Callable[[], None]:
        def one() -> None:
            opened = tracer.start_span("chat gpt-4o-mini", attributes=attributes)
            opened.set_attribute("gen_ai.usage.input_tokens", 10)
            opened.end()

        return one

    work: dict[str, Callable[[], object]] = {
        "prometheus_histogram_observe": lambda: observed.observe(0.5),
        "otel_histogram_record": lambda: histogram.record(0.5, attributes),
        "otel_span_sampled_no_export": span(sampled),
        "otel_span_not_sampled": span(unsampled),
    }
    work.update(_per_call_work())
    costs = {}
    for name, fn in work.items():
        started = time.process_time()
        for _ in range(repeat):
            fn()
        logs.flush()  # the writer thread's writes of the call lines count too
        costs[name] = (time.process_time() - started) / repeat * 1e6
    print(json.dumps(costs))


class _Context:
    """Enough of a grpc.aio ServicerContext for ``Observer.begin``."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer rmk_x"), ("x-request-id", "bench-1"), ("user-agent", "bench"))

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


def _per_call_work() -> dict[str, Callable[[], object]]:
    """One Chat's observation as the servicer path makes it: off, and with Prometheus on.

    The call's JSON log line is written (to /dev/null) as in production: through the
    services' logging set-up (``rmllm_common.logs.configure``), so by its fast path.
    """
    import grpc
    from prometheus_client import CollectorRegistry
    from realmultillm.llm.v1 import llm_pb2

    from llm_service import metrics, telemetry
    from llm_service.adapters.base import Finished, FinishReason, Usage
    from rmllm_common import logs
    from rmllm_common.observe import Observer
    from rmllm_common.registry import default_registry

    logs.configure("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    spec = default_registry().resolve("openai")
    finished = Finished(FinishReason.STOP, Usage(24, 8, 32), "gpt-4o-mini-2024-07-18", "chatcmpl-1")
    usage = llm_pb2.Usage(input_tokens=24, output_tokens=8, total_tokens=32, cost_usd=0.00001)
    context: Any = _Context()
    prometheus = metrics.CallHooks(metrics.LLMMetrics(CollectorRegistry()))

    def one(observer: Observer) -> Callable[[], None]:
        def call() -> None:
            observed = observer.begin("/realmultillm.llm.v1.LLMService/Chat", context, False)
            telemetry.note_provider(spec)
            telemetry.note_prepared(spec, "gpt-4o-mini")
            telemetry.note_first_event()
            telemetry.note_answer(finished, usage)
            observer.end(observed, grpc.StatusCode.OK, "")

        return call

    return {
        "observed_call_off": one(Observer("llm")),
        "observed_call_prometheus": one(Observer("llm", prometheus)),
    }


def otel_chat_costs(chats: int = 5000) -> dict[str, float]:
    """Microseconds of CPU per Chat for the LLM service's OpenTelemetry work, with every trace
    sampled and with 1 % (``parentbased_traceidratio``), each in a fresh process (the tracer
    provider is set once per process); "off" is the same Chat with nothing set."""
    costs = {}
    for mode in ("off", "all", "1pct"):
        costs[mode] = float(_in_fresh_process(f"_otel_chat({mode!r}, {chats})")["us_per_chat"])
    return costs


def _otel_providers(mode: str, chats: int) -> None:
    """This process's tracer and meter providers as ``rmllm_common.telemetry`` sets them up,
    with an exporter that encodes and serialises each batch as the OTLP exporter does,
    without sending it."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio

    from rmllm_common import telemetry as common
    from rmllm_common.sampling import PrimedIds

    class Encoding(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    plain = Resource.create({"service.name": "rmllm-llm"})
    resource = common._resource_hashed_once(Resource)(plain.attributes, plain.schema_url)
    sampler = ALWAYS_ON if mode == "all" else ParentBasedTraceIdRatio(0.01)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler, id_generator=PrimedIds())
    tracer_provider.add_span_processor(BatchSpanProcessor(Encoding(), max_queue_size=10 * chats * 4))
    trace.set_tracer_provider(tracer_provider)
    views = [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(bounds))
        for name, bounds in common.GENAI_BUCKETS.items()
    ]
    otel_metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[InMemoryMetricReader()], views=views)
    )


class _Vault:
    """The vault stub's two unary methods, answering at once."""

    async def ResolveCredentials(self, request: object, *, metadata: object = (), **options: object) -> None:
        return None

    AuthenticateToken = ResolveCredentials


def _otel_chat(mode: str, chats: int) -> None:
    """One simulated Chat's observation, as the servicer path makes it, ``chats`` times: print
    its CPU in µs (median of five runs, the span exporter's encoding included)."""
    import asyncio

    import grpc
    from realmultillm.llm.v1 import llm_pb2

    from llm_service import telemetry
    from llm_service.adapters.base import ChatParams, Finished, FinishReason, TextDelta, Usage
    from rmllm_common.registry import default_registry
    from rmllm_common.telemetry import TelemetrySettings

    if on := mode != "off":
        _otel_providers(mode, chats)
    logging.getLogger("rmllm.calls").disabled = True  # the log line is timed elsewhere
    observer = telemetry.setup(TelemetrySettings(traces=on, otel_metrics=on))
    spec = default_registry().resolve("openai")
    params = ChatParams("gpt-4o-mini", (), max_tokens=256)
    finished = Finished(FinishReason.STOP, Usage(24, 8, 32), "gpt-4o-mini-2024-07-18", "chatcmpl-1")
    usage = llm_pb2.Usage(input_tokens=24, output_tokens=8, total_tokens=32, cost_usd=0.00001)
    context: Any = _Context()
    vault = telemetry.vault_stub(_Vault())

    async def provider() -> Any:
        span = telemetry.http_span("POST", "https://api.openai.com/v1/chat/completions")
        if span is not None:
            telemetry.end_http_span(span, 200)
        telemetry.note_first_event()
        yield TextDelta("Hel")
        yield TextDelta("lo")
        yield finished

    async def chat() -> None:
        call = observer.begin("/realmultillm.llm.v1.LLMService/Chat", context, False)
        telemetry.note_provider(spec)
        telemetry.note_prepared(spec, params.model)
        await vault.ResolveCredentials(None, metadata=(("x-request-id", "bench-1"),))
        events = telemetry.traced(provider(), spec, params)
        async for _ in events:
            pass
        await events.aclose()
        telemetry.note_answer(finished, usage)
        observer.end(call, grpc.StatusCode.OK, "")

    def flush() -> None:
        if on:
            from opentelemetry import trace

            trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]

    async def runs() -> list[float]:
        for _ in range(chats // 5):
            await chat()
        flush()
        seconds = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(chats):
                await chat()
            flush()
            seconds.append(time.process_time() - started)
        return seconds

    seconds = asyncio.run(runs())
    print(json.dumps({"us_per_chat": statistics.median(seconds) / chats * 1e6}))
