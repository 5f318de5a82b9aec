"""A small OTLP/gRPC receiver for tests: the collector's Trace and Metrics services on port 0.

Built on the ``opentelemetry-proto`` messages and services. It keeps every exported
span (flattened with its resource's ``service.name``) and every metric data point
name, so a test can ask for one trace's spans once they have arrived.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def _value(any_value: common_pb2.AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass(frozen=True)
class Span:
    """One received span, flattened."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]

    @property
    def kind_name(self) -> str:
        return trace_pb2.Span.SpanKind.Name(self.kind)  # type: ignore[arg-type]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """Collects what the services export."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metric_points: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(None)

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self._spans(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self._metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def _spans(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    received.append(
                        Span(
                            service=service,
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(received)

    def _metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._lock:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        points = list(getattr(metric, kind).data_points) if kind else []
                        self.metric_points.setdefault(metric.name, []).extend(points)

    def trace(self, trace_id: str, *, until: int, timeout: float = 30.0) -> list[Span]:
        """The spans of ``trace_id`` once at least ``until`` have arrived (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if len(spans) >= until or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)
