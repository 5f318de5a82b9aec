"""Telemetry settings and the once-per-process set-up of Prometheus and OpenTelemetry.

``TelemetrySettings.from_env`` reads the opt-ins: ``--metrics-listen`` /
``RMLLM_METRICS_LISTEN`` (Prometheus, off when unset), ``PROMETHEUS_MULTIPROC_DIR``
(set by the ``--workers`` supervisor, see ``prom``), and the standard ``OTEL_*``
variables: traces are exported when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (metrics likewise with
``..._METRICS_ENDPOINT``), unless ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` is ``none``. The exporters
read the rest themselves (protocol, headers, timeouts, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``). Message contents are only put on spans with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``. With nothing set,
``start`` does nothing and every hook stays a cheap ``if`` on a flag.

A service may aggregate metrics on its hot path itself and register a producer
(``set_metric_producer``): the periodic metric reader adds what it returns to every
export, next to the SDK's own instruments (the SDK has no producer interface).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")
# prometheus_client's multiprocess directory (set by the --workers supervisor, see ``prom``);
# named here so that reading the settings does not load prometheus_client.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True)
class TelemetrySettings:
    """What this process exports, decided once at start."""

    metrics_listen: str | None = None
    multiproc_dir: str | None = None
    traces: bool = False
    otel_metrics: bool = False
    protocol: str = "grpc"
    capture_content: bool = False

    @property
    def prometheus(self) -> bool:
        """Record Prometheus metrics (served here, or by the supervisor)."""
        return bool(self.metrics_listen or self.multiproc_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str], metrics_listen: str | None = None) -> TelemetrySettings:
        """Read the opt-ins; ``metrics_listen`` is the ``--metrics-listen`` flag."""
        listen = (metrics_listen or env.get("RMLLM_METRICS_LISTEN") or "").strip() or None
        if listen is not None:
            _check_listen(listen)
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()

        def wanted(signal: str) -> bool:
            chosen = env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
            specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
            return not disabled and chosen != "none" and bool(endpoint or specific)

        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip().lower() or "grpc"
        if protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, not {protocol!r}")
        return cls(
            metrics_listen=listen,
            multiproc_dir=env.get(MULTIPROC_ENV, "").strip() or None,
            traces=wanted("TRACES"),
            otel_metrics=wanted("METRICS"),
            protocol=protocol,
            capture_content=env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().lower()
            in _TRUE,
        )


def _check_listen(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"--metrics-listen / RMLLM_METRICS_LISTEN must be HOST:PORT (for example 127.0.0.1:9464), "
            f"not {listen[:80]!r}"
        )


# Bucket boundaries of the OpenTelemetry GenAI metrics, as the semantic conventions give them.
class LabelChildren:
    """The base of a service's metric set: each labelled child looked up once, then kept."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


OPERATION_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_USAGE_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_BUCKETS = {
    "gen_ai.client.operation.duration": OPERATION_DURATION_BUCKETS,
    "gen_ai.client.token.usage": TOKEN_USAGE_BUCKETS,
    "gen_ai.server.time_to_first_token": TIME_TO_FIRST_TOKEN_BUCKETS,
    "gen_ai.server.time_per_output_token": TIME_PER_OUTPUT_TOKEN_BUCKETS,
}


# Metrics a service aggregates itself, by name: each is called at every export with whether the
# exporter wants deltas, and returns OpenTelemetry SDK ``Metric``s (``llm_service.telemetry``'s
# GenAI histograms: recording them through the SDK's instruments costs ~7 µs a value).
MetricProducer = Callable[[bool], list[Any]]
_producers: dict[str, MetricProducer] = {}


def set_metric_producer(name: str, produce: MetricProducer | None) -> None:
    """Export ``produce``'s metrics with every periodic export (None: no longer)."""
    if produce is None:
        _producers.pop(name, None)
    else:
        _producers[name] = produce


def produced_metrics(delta: bool) -> list[Any]:
    """What the producers have now."""
    return [metric for produce in list(_producers.values()) for metric in produce(delta)]


def start(settings: TelemetrySettings, service_name: str) -> Callable[[], None]:
    """Set up what ``settings`` asks for in this process; return the shutdown (flush) function."""
    stops: list[Callable[[], Any]] = []
    if settings.metrics_listen:
        from rmllm_common.prom import serve_metrics  # noqa: PLC0415

        server, _ = serve_metrics(settings.metrics_listen, settings.multiproc_dir)
        stops.append(server.shutdown)
        stops.append(server.server_close)
    if settings.traces or settings.otel_metrics:
        stops.extend(_start_otel(settings, service_name))

    def stop() -> None:
        for fn in stops:
            try:
                fn()
            except Exception:  # a failing exporter must not stop the shutdown
                log.warning("telemetry shutdown step failed", exc_info=True)

    return stop


def _start_otel(settings: TelemetrySettings, service_name: str) -> list[Callable[[], Any]]:
    # Imported here: a process without OTEL_* never loads the SDK.
    from opentelemetry import metrics, trace  # noqa: PLC0415
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415

    # One instance id per process: with --workers N each worker exports its own metric streams,
    # which a backend must not mistake for one process restarting.
    own = {"service.name": service_name, "service.instance.id": str(uuid.uuid4())}
    merged = Resource.create(own).merge(OTELResourceDetector().detect())
    resource = _resource_hashed_once(Resource)(merged.attributes, merged.schema_url)
    stops: list[Callable[[], Any]] = []
    grpc_protocol = settings.protocol == "grpc"
    if settings.traces:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        if grpc_protocol:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]  # noqa: PLC0415
                OTLPSpanExporter,
            )
        from rmllm_common.sampling import PrimedIds  # noqa: PLC0415

        # The SDK's random ids, primed by the not-sampled roots' fast path (rmllm_common.sampling),
        # unless the operator chose a generator of their own.
        ids = None if os.environ.get("OTEL_PYTHON_ID_GENERATOR") else PrimedIds()
        tracer_provider = TracerProvider(resource=resource, id_generator=ids)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        stops.append(tracer_provider.shutdown)
    if settings.otel_metrics:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View  # noqa: PLC0415

        if grpc_protocol:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]  # noqa: PLC0415
                OTLPMetricExporter,
            )
        views = [
            View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(boundaries))
            for name, boundaries in GENAI_BUCKETS.items()
        ]
        exporter = OTLPMetricExporter()
        reader = _producing_reader(PeriodicExportingMetricReader)(exporter, resource)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
        metrics.set_meter_provider(meter_provider)
        stops.append(meter_provider.shutdown)
    log.info(
        "exporting telemetry",
        extra={"traces": settings.traces, "otel_metrics": settings.otel_metrics, "event": "otel"},
    )
    return stops


def _resource_hashed_once(base: Any) -> Any:
    """``Resource`` with its hash computed once: the OTLP span exporter groups every span by
    its resource, and ``Resource.__hash__`` serialises all the attributes to JSON each time
    (about 3 µs a span). The attributes never change, so neither does the hash."""

    class HashedOnce(base):  # type: ignore[misc]
        def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return int(self._hash)

        __eq__ = base.__eq__

    return HashedOnce


def _producing_reader(base: Any) -> Any:
    """``PeriodicExportingMetricReader`` that adds the producers' metrics to each export (also
    when the SDK's own instruments have nothing to export)."""
    import threading  # noqa: PLC0415

    from opentelemetry.sdk.metrics import Histogram  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        AggregationTemporality,
        MetricsData,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415

    class ProducingReader(base):  # type: ignore[misc]
        def __init__(self, exporter: Any, resource: Any) -> None:
            super().__init__(exporter)
            self._resource = resource
            preferred = getattr(exporter, "_preferred_temporality", None) or {}
            self._delta = preferred.get(Histogram) == AggregationTemporality.DELTA
            self._collecting = threading.Lock()
            self._received = False

        def collect(self, timeout_millis: float = 10_000) -> None:
            with self._collecting:
                self._received = False
                super().collect(timeout_millis=timeout_millis)
                if not self._received:  # the SDK had nothing: export the producers' alone
                    self._receive_metrics(MetricsData(resource_metrics=[]), timeout_millis=timeout_millis)

        def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            self._received = True
            produced = produced_metrics(self._delta)
            if produced:
                scope = ScopeMetrics(InstrumentationScope("rmllm"), produced, "")
                own = ResourceMetrics(self._resource, [scope], "")
                metrics_data = MetricsData(resource_metrics=[*metrics_data.resource_metrics, own])
            if metrics_data.resource_metrics:
                super()._receive_metrics(metrics_data, timeout_millis=timeout_millis, **kwargs)

    return ProducingReader
