"""Observability end to end: a real Prometheus scrapes both services (two workers each)
while calls of every outcome run, an OTLP receiver gets one trace from the caller through
the LLM service and the vault to the provider call, and the request id of a failed call is
in the client's error and in both services' call log lines.

Prometheus is Debian's ``prometheus`` package; ``python3 scripts/dev.py test`` installs
it (``ensure_prometheus``) as CI does.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import KEYS
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from testkit.otlp import Receiver
from testkit.stack import Stack

from clients import Client
from clients import errors as cerr
from rmllm_common.telemetry import GENAI_BUCKETS

CHAT_BURST = 8


@dataclass
class Observed:
    """The running system and what the test's calls did."""

    stack: Stack
    receiver: Receiver
    prometheus: str
    calls: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    successes: int = 0
    resolves: Counter[str] = field(default_factory=Counter)
    trace_id: str = ""
    failed: cerr.RmllmClientError | None = None
    token: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metrics_address(service: Any) -> str:
    for event in service.events():
        if event.get("event") == "metrics":
            return str(event["address"])
    raise AssertionError(f"no metrics listener logged:\n{service.logs}")


def _start_prometheus(tmp: Path, targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `python3 scripts/dev.py test` installs Debian's package")
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
        for job, address in targets.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
    address = f"127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return proc, address
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("prometheus did not become ready")
        time.sleep(0.2)


def query(prometheus: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result: label set -> value."""
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return {tuple(sorted(item["metric"].items())): float(item["value"][1]) for item in body["data"]["result"]}


def _record(observed: Observed, method: str, provider: str, outcome: Any) -> None:
    if isinstance(outcome, cerr.RmllmClientError):
        observed.calls[(method, provider, outcome.code.name, outcome.reason)] += 1
        return
    observed.calls[(method, provider, "OK", "")] += 1
    observed.successes += 1
    observed.tokens["input"] += outcome.usage.input_tokens
    observed.tokens["output"] += outcome.usage.output_tokens


def _chat(observed: Observed, client: Client, provider: str) -> Any:
    try:
        result: Any = client.chat(provider, "Hello")
    except cerr.RmllmClientError as err:
        result = err
    _record(observed, "Chat", provider if provider in KEYS or provider == "google" else "none", result)
    return result


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    receiver = Receiver()
    stack = Stack.start(
        tmp,
        RMLLM_WORKERS="2",
        RMLLM_METRICS_LISTEN="127.0.0.1:0",
        RMLLM_CHAT_RATE_PER_MINUTE="1",
        RMLLM_CHAT_BURST=str(CHAT_BURST),
        # Every call resolves at the vault, so its metrics and call log see each one (the
        # credential cache, on by default, would answer repeats in the LLM service).
        RMLLM_CREDENTIAL_CACHE_SECONDS="0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    prometheus, address = _start_prometheus(
        tmp, {"rmllm-llm": _metrics_address(stack.llm), "rmllm-vault": _metrics_address(stack.vault)}
    )
    try:
        yield _run_calls(Observed(stack, receiver, address))
    finally:
        prometheus.terminate()
        prometheus.wait(15)
        stack.stop()
        receiver.stop()


def _run_calls(observed: Observed) -> Observed:
    stack = observed.stack
    token = observed.token = stack.create_user("alice")
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        client.put_config("anthropic", KEYS["anthropic"], base_url=stack.base_url("anthropic"))
        # Success, unary and streamed.
        stack.enqueue({"transcript": "openai_basic", "route": "chat"})
        _chat(observed, client, "openai")
        stack.enqueue({"transcript": "anthropic_basic", "route": "chat"})
        with client.stream_chat("anthropic", "Hello") as stream:
            "".join(stream)
        _record(observed, "StreamChat", "anthropic", stream.result)
        # The provider refuses the key; the provider is down; no key is stored; unknown provider.
        stack.enqueue({"canned": ["openai", "bad_key"]})
        failed = _chat(observed, client, "openai")
        assert isinstance(failed, cerr.ProviderKeyInvalid)
        observed.failed = failed
        stack.enqueue({"canned": ["anthropic", "overloaded"]})
        assert isinstance(_chat(observed, client, "anthropic"), cerr.ProviderUnavailable)
        assert isinstance(_chat(observed, client, "google"), cerr.KeyNotConfigured)
        assert isinstance(_chat(observed, client, "nope"), cerr.InvalidRequest)
        # One call inside the caller's own span: its trace continues through both services.
        provider = TracerProvider(resource=Resource.create({"service.name": "e2e-caller"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=observed.receiver.endpoint, insecure=True))
        )
        stack.enqueue({"transcript": "openai_basic", "route": "chat"})
        with provider.get_tracer("e2e").start_as_current_span("caller") as span:
            _chat(observed, client, "openai")
            observed.trace_id = format(span.get_span_context().trace_id, "032x")
        provider.shutdown()
    # Our own rate limit: another user past the burst (one connection: one worker's bucket).
    bob = stack.create_user("bob")
    with Client(bob, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        stack.enqueue(*[{"transcript": "openai_basic", "route": "chat"}] * CHAT_BURST)
        for _ in range(CHAT_BURST):
            _chat(observed, client, "openai")
        assert isinstance(_chat(observed, client, "openai"), cerr.RateLimited)
    # Fresh connections until both workers have served calls (SO_REUSEPORT spreads them).
    for _ in range(40):
        if len(_worker_pids(stack)) >= 2:
            break
        with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            _chat(observed, client, "nope")
    assert len(_worker_pids(stack)) >= 2, "every call landed on one worker"
    return observed


def _worker_pids(stack: Stack) -> set[int]:
    lines = stack.llm.events()
    return {int(str(e["pid"])) for e in lines if e.get("event") == "call" and e.get("service") == "llm"}


def _poll(prometheus: str, promql: str, want: dict[Any, float], timeout: float = 45.0) -> dict[Any, float]:
    deadline = time.monotonic() + timeout
    while True:
        got = query(prometheus, promql)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def _poll_any(
    prometheus: str, promql: str, answers: list[dict[Any, float]], timeout: float = 45.0
) -> dict[Any, float]:
    deadline = time.monotonic() + timeout
    while True:
        got = query(prometheus, promql)
        if got in answers or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_prometheus_counts_every_call_over_both_workers(observed: Observed) -> None:
    # Prometheus drops labels whose value is empty: a success has no reason label.
    want = {
        (
            ("code", code),
            ("method", method),
            ("provider", provider),
            *((("reason", reason),) if reason else ()),
        ): float(count)
        for (method, provider, code, reason), count in observed.calls.items()
    }
    got = _poll(
        observed.prometheus, "sum by (method, provider, code, reason) (rmllm_llm_requests_total)", want
    )
    assert got == want


def test_prometheus_token_sums_and_ttft_counts_match(observed: Observed) -> None:
    want_tokens = {(("type", kind),): float(count) for kind, count in observed.tokens.items()}
    got = _poll(observed.prometheus, "sum by (type) (rmllm_llm_tokens_total)", want_tokens)
    assert got == want_tokens
    want_ttft = {(): float(observed.successes)}
    assert (
        _poll(observed.prometheus, "sum(rmllm_llm_time_to_first_token_seconds_count)", want_ttft) == want_ttft
    )
    refusals = {(("reason", "RATE_LIMITED"),): 1.0}
    assert _poll(observed.prometheus, "sum by (reason) (rmllm_llm_refusals_total)", refusals) == refusals
    assert query(observed.prometheus, "sum(rmllm_llm_open_streams)") == {(): 0.0}


def test_prometheus_vault_metrics(observed: Observed) -> None:
    # Every call past validation asked the vault once (no credential cache here), except
    # a rate-limited call whose worker already knew the caller: that one is refused before
    # the vault round trip. With two workers either may have taken it, so both are right.
    resolved = sum(n for (_, provider, code, _), n in observed.calls.items() if provider != "none")
    key_missing = sum(n for (_, _, _, reason), n in observed.calls.items() if reason == "KEY_NOT_CONFIGURED")
    limited = sum(n for (_, _, _, reason), n in observed.calls.items() if reason == "RATE_LIMITED")
    answers = [
        {(("code", "FAILED_PRECONDITION"),): float(key_missing), (("code", "OK"),): float(ok)}
        for ok in range(resolved - key_missing - limited, resolved - key_missing + 1)
    ]
    promql = 'sum by (code) (rmllm_vault_requests_total{method="ResolveCredentials"})'
    want = _poll_any(observed.prometheus, promql, answers)
    assert want in answers
    seen_by_llm = 'sum by (code) (rmllm_llm_vault_call_duration_seconds_count{method="ResolveCredentials"})'
    assert _poll(observed.prometheus, seen_by_llm, want) == want
    # The fake answered openai with 200 (every success) and once with 401 (the refused key).
    openai_ok = sum(
        n for (_, provider, code, _), n in observed.calls.items() if (provider, code) == ("openai", "OK")
    )
    statuses = {(("status", "200"),): float(openai_ok), (("status", "401"),): 1.0}
    promql = 'sum by (status) (rmllm_llm_provider_http_responses_total{provider="openai"})'
    assert _poll(observed.prometheus, promql, statuses) == statuses
    audit = query(observed.prometheus, "sum(rmllm_vault_audit_append_seconds_count)")
    assert audit[()] >= resolved  # every resolve and every stored config is audited


def test_one_trace_links_caller_llm_vault_and_provider(observed: Observed) -> None:
    spans = observed.receiver.trace(observed.trace_id, until=6)
    by_name = {(s.service, s.name, s.kind_name): s for s in spans}
    caller = by_name[("e2e-caller", "caller", "SPAN_KIND_INTERNAL")]
    server = by_name[("rmllm-llm", "realmultillm.llm.v1.LLMService/Chat", "SPAN_KIND_SERVER")]
    resolve_out = by_name[
        ("rmllm-llm", "realmultillm.vault.v1.VaultService/ResolveCredentials", "SPAN_KIND_CLIENT")
    ]
    resolve_in = by_name[
        ("rmllm-vault", "realmultillm.vault.v1.VaultService/ResolveCredentials", "SPAN_KIND_SERVER")
    ]
    chat = by_name[("rmllm-llm", "chat gpt-4o-mini", "SPAN_KIND_CLIENT")]
    http = by_name[("rmllm-llm", "POST", "SPAN_KIND_CLIENT")]
    assert server.parent_span_id == caller.span_id
    assert resolve_out.parent_span_id == server.span_id
    assert resolve_in.parent_span_id == resolve_out.span_id
    assert chat.parent_span_id == server.span_id
    assert http.parent_span_id == chat.span_id
    assert http.attributes["http.response.status_code"] == 200
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert chat.attributes["gen_ai.response.id"] == "chatcmpl-BUq5Zx2hJ7mQv8K1nRtY3pLdW0aXe"
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attributes["gen_ai.usage.input_tokens"] == 24
    assert chat.attributes["gen_ai.usage.output_tokens"] == 8
    # Message contents stay out unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT says so.
    assert not any("messages" in key for s in spans for key in s.attributes)


def test_genai_metrics_use_the_spec_buckets(observed: Observed) -> None:
    deadline = time.monotonic() + 30
    while set(GENAI_BUCKETS) - set(observed.receiver.metric_points) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, bounds in GENAI_BUCKETS.items():
        points = observed.receiver.metric_points.get(name)
        assert points, f"{name} was not exported"
        assert tuple(points[-1].explicit_bounds) == tuple(float(b) for b in bounds)


def test_request_id_in_client_error_and_both_services_logs(observed: Observed) -> None:
    failed = observed.failed
    assert failed is not None and failed.request_id
    assert f"request id {failed.request_id}" in str(failed)
    llm_lines = [e for e in observed.stack.llm.events() if e.get("request_id") == failed.request_id]
    call_line = next(e for e in llm_lines if e.get("event") == "call")
    assert call_line["method"] == "Chat" and call_line["code"] == "FAILED_PRECONDITION"
    assert call_line["reason"] == "PROVIDER_KEY_INVALID" and call_line["provider"] == "openai"
    assert call_line["model"] == "gpt-4o-mini" and "latency_seconds" in call_line
    vault_lines = [e for e in observed.stack.vault.events() if e.get("request_id") == failed.request_id]
    assert any(e.get("event") == "call" and e["method"] == "ResolveCredentials" for e in vault_lines)


def test_request_id_in_the_usage_record(observed: Observed) -> None:
    failed = observed.failed
    assert failed is not None
    stack = observed.stack
    deadline = time.monotonic() + 30
    with Client(observed.token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        while True:  # the LLM service sends its usage records in batches, a moment later
            records = {r.request_id: r for r in client.usage_records(page_size=500).records}
            if failed.request_id in records or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    record = records[failed.request_id]
    assert (record.provider, record.reason) == ("openai", "PROVIDER_KEY_INVALID")


def test_a_sampled_share_of_calls_makes_whole_traces_and_the_rest_tell_the_vault(tmp_path: Path) -> None:
    # At a ratio, a new trace that is not sampled gets its span without the SDK
    # (rmllm_common.sampling): the share sampled must be the ratio's, each sampled trace whole,
    # and the vault must follow the LLM service's decision for the others (no trace of its own).
    calls = 40
    receiver = Receiver()
    stack = Stack.start(
        tmp_path,
        RMLLM_CREDENTIAL_CACHE_SECONDS="0",  # every Chat asks the vault
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRICS_EXPORTER="none",
    )
    try:
        token = stack.create_user("carol")
        with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
            stack.enqueue(*[{"transcript": "openai_basic", "route": "chat"}] * calls)
            for _ in range(calls):
                client.chat("openai", "Hello")
        deadline = time.monotonic() + 30
        while True:  # the call log lines are written a moment later
            chats = [e for e in stack.llm.events() if e.get("event") == "call" and e.get("method") == "Chat"]
            resolves = [
                e
                for e in stack.vault.events()
                if e.get("event") == "call" and e.get("method") == "ResolveCredentials"
            ]
            if len(chats) == len(resolves) == calls or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # Every call has a trace id, sampled or not, and the vault's call carries the same one.
        trace_ids = [str(e["trace_id"]) for e in chats]
        assert len(set(trace_ids)) == calls
        assert sorted(str(e["trace_id"]) for e in resolves) == sorted(trace_ids)
        deadline = time.monotonic() + 30
        while True:
            servers = [s for s in receiver.spans if s.kind_name == "SPAN_KIND_SERVER"]
            llm_servers = {s.trace_id for s in servers if s.name == "realmultillm.llm.v1.LLMService/Chat"}
            vault_servers = {
                s.trace_id
                for s in servers
                if s.name == "realmultillm.vault.v1.VaultService/ResolveCredentials"
            }
            if (llm_servers and llm_servers == vault_servers) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # About half sampled (five standard deviations of 40 calls either side: 4 to 36), each
        # one whole: the LLM service's server span and the vault's, in the same trace; and no
        # vault trace alone.
        assert 4 <= len(llm_servers) <= 36, len(llm_servers)
        assert llm_servers <= set(trace_ids)
        assert vault_servers == llm_servers
    finally:
        stack.stop()
        receiver.stop()
