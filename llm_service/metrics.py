"""The LLM service's Prometheus metrics, and the small API other modules record through.

Every metric is named ``rmllm_llm_*``, in base units (seconds, USD, tokens), with
labels drawn from small fixed sets: the method, the provider's registry id, the
model only when the registry knows it (else ``other``: callers choose model
strings freely), the gRPC code, the ErrorInfo reason, the HTTP status. User ids
are never labels. ``enable()`` creates the metrics once per process; until then
every function here returns at once, so a service without ``--metrics-listen``
pays one ``None`` check per hook. Labelled children are looked up once and kept.

The usage reporter (``llm_service.usage``) calls ``usage_queue_depth(n)`` after each
delivery attempt and ``usage_records_dropped(n, reason)`` when records are thrown away.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from rmllm_common.observe import Call
from rmllm_common.telemetry import TIME_PER_OUTPUT_TOKEN_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS, LabelChildren

TOKEN_TYPES: Final = ("input", "output", "cache_read", "cache_creation", "reasoning")
REFUSAL_REASONS: Final = frozenset({"RATE_LIMITED", "BUDGET_EXCEEDED"})
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
VAULT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
OTHER_MODEL: Final = "other"


class LLMMetrics(LabelChildren):
    """The metric objects, created against prometheus_client's default registry."""

    def __init__(self, registry: Any = None) -> None:
        """The metrics, in ``registry`` (default: prometheus_client's global one)."""
        super().__init__()
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram  # noqa: PLC0415 - loaded only when enabled

        reg = registry if registry is not None else REGISTRY

        self.requests = Counter(
            "rmllm_llm_requests",
            "LLMService calls by method, provider, model, gRPC code and ErrorInfo reason.",
            ["method", "provider", "model", "code", "reason"],
            registry=reg,
        )
        self.duration = Histogram(
            "rmllm_llm_request_duration_seconds",
            "Time from the call reaching the server to its end.",
            ["method", "provider", "code"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "rmllm_llm_time_to_first_token_seconds",
            "Time from the call reaching the server to the first answer event.",
            ["provider", "model"],
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        self.tpot = Histogram(
            "rmllm_llm_time_per_output_token_seconds",
            "Time per output token after the first one.",
            ["provider", "model"],
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "rmllm_llm_tokens",
            "Tokens by type, as the providers reported them.",
            ["provider", "model", "type"],
            registry=reg,
        )
        self.cost = Counter(
            "rmllm_llm_cost_usd", "Cost of the answered calls in USD.", ["provider", "model"], registry=reg
        )
        self.http_responses = Counter(
            "rmllm_llm_provider_http_responses",
            "HTTP responses from providers by status code.",
            ["provider", "status"],
            registry=reg,
        )
        self.retries = Counter(
            "rmllm_llm_provider_retries",
            "Provider calls retried after a transient failure.",
            ["provider"],
            registry=reg,
        )
        self.vault_duration = Histogram(
            "rmllm_llm_vault_call_duration_seconds",
            "Calls to the vault by method and gRPC code.",
            ["method", "code"],
            buckets=VAULT_BUCKETS,
            registry=reg,
        )
        self.cache_lookups = Counter(
            "rmllm_llm_credential_cache_lookups",
            "Credential cache lookups by result.",
            ["result"],
            registry=reg,
        )
        self.open_streams = Gauge(
            "rmllm_llm_open_streams",
            "StreamChat calls in progress.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.refusals = Counter(
            "rmllm_llm_refusals",
            "Calls refused by our own rate limits and budgets, by reason.",
            ["reason"],
            registry=reg,
        )
        self.usage_queue_depth = Gauge(
            "rmllm_llm_usage_queue_depth",
            "Usage records waiting to be reported.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.usage_dropped = Counter(
            "rmllm_llm_usage_records_dropped",
            "Usage records never delivered to the vault, by why: overflow, rejected, lost.",
            ["reason"],
            registry=reg,
        )
        self.redis_outages = Counter(
            "rmllm_llm_redis_outages",
            "Outages of the shared-limit Redis (RMLLM_REDIS_URL) this process saw start.",
            registry=reg,
        )
        self.calls_without_redis = Counter(
            "rmllm_llm_calls_without_redis",
            "Limit checks decided without Redis during an outage (allowed when fail-open, "
            "refused when fail-closed).",
            registry=reg,
        )
        self.cache_hit = self.cache_lookups.labels("hit")
        self.cache_miss = self.cache_lookups.labels("miss")


_metrics: LLMMetrics | None = None


def enable() -> LLMMetrics:
    """Create the metrics (once per process) and turn recording on."""
    global _metrics  # noqa: PLW0603 - one set of metrics per process, like the registry itself
    if _metrics is None:
        _metrics = LLMMetrics()
    return _metrics


def active() -> LLMMetrics | None:
    """The metrics when recording is on."""
    return _metrics


def model_label(call: Call) -> str:
    """The model as a label value: the requested id when the registry knows it."""
    return call.model if call.model_known else OTHER_MODEL


class CallHooks:
    """``observe.Hooks`` of the LLM service: per-call metrics."""

    def __init__(self, metrics: LLMMetrics) -> None:
        self._m = metrics

    def started(self, call: Call) -> None:
        if call.streaming:
            self._m.open_streams.inc()

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        m = self._m
        if call.streaming:
            m.open_streams.dec()
        provider = call.provider or "none"
        model = model_label(call) if call.model else "none"
        m.child(m.requests, call.method, provider, model, code.name, reason).inc()
        m.child(m.duration, call.method, provider, code.name).observe(seconds)
        if reason in REFUSAL_REASONS:
            m.child(m.refusals, reason).inc()
        if call.first_token_seconds is not None:
            m.child(m.ttft, provider, model).observe(call.first_token_seconds)
            if call.output_tokens > 1:
                per_token = (seconds - call.first_token_seconds) / (call.output_tokens - 1)
                m.child(m.tpot, provider, model).observe(max(0.0, per_token))
        if call.usage_seen:
            counts = (
                call.input_tokens,
                call.output_tokens,
                call.cache_read_tokens,
                call.cache_creation_tokens,
                call.reasoning_tokens,
            )
            for kind, count in zip(TOKEN_TYPES, counts, strict=True):
                if count:
                    m.child(m.tokens, provider, model, kind).inc(count)
            if call.cost_usd:
                m.child(m.cost, provider, model).inc(call.cost_usd)


# The API other modules record through; each is a no-op while metrics are off.


def provider_http_response(provider: str, status: int) -> None:
    """A provider answered with HTTP ``status``."""
    m = _metrics
    if m is not None:
        m.child(m.http_responses, provider, str(status)).inc()


def provider_retry(provider: str) -> None:
    """A provider call is being retried."""
    m = _metrics
    if m is not None:
        m.child(m.retries, provider).inc()


def vault_call(method: str, code: str, seconds: float) -> None:
    """A vault call ended with ``code`` after ``seconds``."""
    m = _metrics
    if m is not None:
        m.child(m.vault_duration, method, code).observe(seconds)


def credential_cache(hit: bool) -> None:
    """A credential cache lookup hit or missed."""
    m = _metrics
    if m is not None:
        (m.cache_hit if hit else m.cache_miss).inc()


def usage_queue_depth(depth: int) -> None:
    """The usage-report queue now holds ``depth`` records."""
    m = _metrics
    if m is not None:
        m.usage_queue_depth.set(depth)


def usage_records_dropped(count: int, reason: str) -> None:
    """``count`` usage records were dropped: ``overflow`` (buffer full), ``rejected`` (the vault
    refused them), or ``lost`` (still buffered at shutdown)."""
    m = _metrics
    if m is not None and count:
        m.child(m.usage_dropped, reason).inc(count)


def redis_outage() -> None:
    """The shared-limit Redis became unavailable (counted once per outage)."""
    m = _metrics
    if m is not None:
        m.redis_outages.inc()


def call_without_redis() -> None:
    """A limit check was decided without Redis (fail-open or fail-closed)."""
    m = _metrics
    if m is not None:
        m.calls_without_redis.inc()
