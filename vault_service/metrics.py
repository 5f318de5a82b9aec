"""The vault's Prometheus metrics, and the functions the vault's code records through.

Every metric is named ``rmllm_vault_*`` in base units, with small fixed label
sets (method, gRPC code, ErrorInfo reason, the storage operation's function
name); user ids are never labels. ``enable()`` creates them once per process;
until then each recording function is one ``None`` check.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from rmllm_common.observe import Call
from rmllm_common.telemetry import LabelChildren

DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class VaultMetrics(LabelChildren):
    """The metric objects, created against prometheus_client's default registry."""

    def __init__(self, registry: Any = None) -> None:
        """The metrics, in ``registry`` (default: prometheus_client's global one)."""
        super().__init__()
        from prometheus_client import REGISTRY, Counter, Histogram  # noqa: PLC0415 - loaded only when enabled

        reg = registry if registry is not None else REGISTRY

        self.requests = Counter(
            "rmllm_vault_requests", "VaultService calls by method, gRPC code and ErrorInfo reason.",
            ["method", "code", "reason"], registry=reg,
        )  # fmt: skip
        self.duration = Histogram(
            "rmllm_vault_request_duration_seconds",
            "Time from the call reaching the server to its end.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.db = Histogram(
            "rmllm_vault_db_transaction_seconds",
            "Time a storage operation held its database connection, by operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.audit = Histogram(
            "rmllm_vault_audit_append_seconds",
            "Time to append one audit event to the hash chain.",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.decrypt_failures = Counter(
            "rmllm_vault_decrypt_failures", "Stored keys that could not be decrypted.", registry=reg
        )
        self.auth_failures = Counter(
            "rmllm_vault_auth_failures",
            "Calls refused by authentication, by reason.",
            ["reason"],
            registry=reg,
        )


_metrics: VaultMetrics | None = None


def enable() -> VaultMetrics:
    """Create the metrics (once per process) and turn recording on."""
    global _metrics  # noqa: PLW0603 - one set of metrics per process, like the registry itself
    if _metrics is None:
        _metrics = VaultMetrics()
    return _metrics


class CallHooks:
    """``observe.Hooks`` of the vault: calls by method, code and reason, and their duration."""

    def __init__(self, metrics: VaultMetrics) -> None:
        self._m = metrics

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        m = self._m
        m.child(m.requests, call.method, code.name, reason).inc()
        m.child(m.duration, call.method).observe(seconds)


def db_operation(operation: str, seconds: float) -> None:
    """A storage operation held its connection for ``seconds``."""
    m = _metrics
    if m is not None:
        m.child(m.db, operation).observe(seconds)


def audit_append(seconds: float) -> None:
    """One audit append took ``seconds``."""
    m = _metrics
    if m is not None:
        m.audit.observe(seconds)


def decrypt_failure() -> None:
    """A stored key could not be decrypted."""
    m = _metrics
    if m is not None:
        m.decrypt_failures.inc()


def auth_failure(reason: str) -> None:
    """A call was refused by authentication with ErrorInfo ``reason``."""
    m = _metrics
    if m is not None:
        m.child(m.auth_failures, reason).inc()
