"""The telemetry opt-ins: ``--metrics-listen`` / ``RMLLM_METRICS_LISTEN`` and the standard
``OTEL_*`` variables, read once into the settings; and one server process serving its own
``/metrics``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testkit.llm_harness import SERVICE_TOKEN
from testkit.stack import Stack

from clients import Client
from clients import errors as cerr
from llm_service.settings import LLMSettings, SettingsError
from rmllm_common import telemetry
from rmllm_common.telemetry import TelemetrySettings, _resource_hashed_once

TOKEN = SERVICE_TOKEN  # the harness's random-looking credential


def test_everything_is_off_by_default() -> None:
    settings = TelemetrySettings.from_env({})
    assert not settings.prometheus and not settings.traces and not settings.otel_metrics
    assert not settings.capture_content


def test_otel_variables_turn_export_on_and_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    on = TelemetrySettings.from_env(endpoint)
    assert on.traces and on.otel_metrics and on.protocol == "grpc"
    assert TelemetrySettings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}).traces
    assert not TelemetrySettings.from_env(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}
    ).otel_metrics
    assert not TelemetrySettings.from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}).traces
    only_metrics = TelemetrySettings.from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert (only_metrics.traces, only_metrics.otel_metrics) == (False, True)
    http = TelemetrySettings.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert http.protocol == "http/protobuf"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        TelemetrySettings.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    content = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    assert TelemetrySettings.from_env(content).capture_content


def test_metrics_listen_flag_wins_and_bad_addresses_are_refused() -> None:
    env = {"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_METRICS_LISTEN": "127.0.0.1:9464"}
    assert LLMSettings.from_env(env).telemetry.metrics_listen == "127.0.0.1:9464"
    flagged = LLMSettings.from_env(env, metrics_listen="0.0.0.0:9999")
    assert flagged.telemetry.metrics_listen == "0.0.0.0:9999"
    with pytest.raises(SettingsError, match="RMLLM_METRICS_LISTEN must be HOST:PORT"):
        LLMSettings.from_env({**env, "RMLLM_METRICS_LISTEN": "9464"})


NOTHING_LOADED = """
import asyncio, sys
sys.path.append("tests")
from testkit.llm_harness import auth, chat_request, llm_harness
TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
async def main():
    async with llm_harness({}) as llm:
        await llm.stub.Chat(chat_request(), metadata=(*auth(), ("traceparent", TRACEPARENT)))
    loaded = {m.split(".")[0] for m in sys.modules}
    print(sorted(loaded & {"opentelemetry", "prometheus_client"}))
asyncio.run(main())
"""


def test_with_nothing_set_a_chat_loads_neither_prometheus_nor_opentelemetry() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NOTHING_LOADED],
        cwd=Path(__file__).resolve().parents[1],
        env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RMLLM_", "PROMETHEUS_"))},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_the_exported_resource_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.resources import Resource

    plain = Resource.create({"service.name": "rmllm-llm", "service.instance.id": "i"})
    resource = _resource_hashed_once(Resource)(plain.attributes, plain.schema_url)
    assert isinstance(resource, Resource) and resource == plain and hash(resource) == hash(plain)

    def no_more(_: object) -> int:
        raise AssertionError("hashed again")

    monkeypatch.setattr(Resource, "__hash__", no_more)
    assert len({resource, resource}) == 1  # the span exporter's grouping, without serialising


def test_the_metric_reader_exports_what_producers_aggregated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_producers", {})  # only this test's producer, whatever ran before
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        Gauge,
        Metric,
        MetricExporter,
        MetricExportResult,
        NumberDataPoint,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    class Kept(MetricExporter):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[Any] = []

        def export(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            self.batches.append(metrics_data)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    exporter = Kept()
    resource = Resource.create({"service.name": "rmllm-llm"})
    reader = telemetry._producing_reader(PeriodicExportingMetricReader)(exporter, resource)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    asked: list[bool] = []

    def produce(delta: bool) -> list[Metric]:
        asked.append(delta)
        point = NumberDataPoint({"a": "b"}, 0, 1, 7)
        return [Metric("produced", "", "1", Gauge([point]))]

    def exported() -> set[str]:
        batches, exporter.batches = exporter.batches, []
        return {
            m.name for d in batches for r in d.resource_metrics for s in r.scope_metrics for m in s.metrics
        }

    telemetry.set_metric_producer("test", produce)
    try:
        reader.collect()  # the SDK has nothing of its own
        assert exported() == {"produced"} and asked == [False]
        provider.get_meter("m").create_counter("own").add(1)
        reader.collect()
        assert exported() == {"produced", "own"}
        telemetry.set_metric_producer("test", None)
        reader.collect()
        assert exported() == {"own"}
    finally:
        telemetry.set_metric_producer("test", None)
        provider.shutdown()


def test_one_process_serves_its_own_metrics(tmp_path: Path) -> None:
    stack = Stack.start(tmp_path, RMLLM_METRICS_LISTEN="127.0.0.1:0")
    try:
        token = stack.create_user("carol")
        with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            for _ in range(3):
                with pytest.raises(cerr.InvalidRequest):
                    client.chat("nope", "Hello")
        address = next(str(e["address"]) for e in stack.llm.events() if e.get("event") == "metrics")
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        stack.stop()
    samples = {
        (s.name, s.labels.get("code", ""), s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("rmllm_llm_requests_total", "INVALID_ARGUMENT", "UNKNOWN_PROVIDER")] == 3
