"""The LLM service's typed settings, read once at start from flags and the environment.

Everything the LLM service is configured with lives in ``LLMSettings``; nothing
deeper in the code reads ``os.environ``. Every variable is validated here with a
message that names it and says what is accepted. The LLM service never has the
seed: it needs the vault's address and the service credential (``RMLLM_SERVICE_TOKEN``,
``RMLLM_SERVICE_TOKEN_FILE``, else the shared file in the data directory, created on
first run), plus the limits,
retry and cache knobs below. A rate of 0 turns that limit off (for benchmarks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llm_service.http import KIB, MIB, UpstreamLimits
from llm_service.netpolicy import DEFAULT_ALLOWED_ENDPOINT_NETWORKS, EndpointPolicy
from rmllm_common import settings as parse
from rmllm_common import state
from rmllm_common.secret import Secret

# The shared parsers (rmllm_common.settings), under the names this module reads them by.
from rmllm_common.settings import SettingsError, check_address
from rmllm_common.settings import flag as _flag
from rmllm_common.settings import integer as _integer
from rmllm_common.settings import number as _number
from rmllm_common.telemetry import TelemetrySettings

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_VAULT_ADDR = "127.0.0.1:50052"
MAX_CREDENTIAL_CACHE_SECONDS = 60.0
DEFAULT_CREDENTIAL_CACHE_SECONDS = 30.0
REDIS_FAILURE_MODES = ("open", "closed")
_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9:._{}-]{0,64}$")


@dataclass(frozen=True)
class LLMSettings:
    """Everything the LLM service is configured with."""

    service_token: Secret
    listen: str = DEFAULT_LISTEN
    vault_addr: str = DEFAULT_VAULT_ADDR
    allow_custom_base_url: bool = False
    grace_seconds: float = 10.0
    log_level: str = "info"
    workers: int = 1
    # SO_REUSEPORT: only for a worker of ``serve --workers N`` (the hidden --shared-port).
    reuse_port: bool = False
    # The vault: an upper bound per call (the caller's deadline, when shorter, wins).
    vault_timeout_seconds: float = 10.0
    credential_cache_seconds: float = DEFAULT_CREDENTIAL_CACHE_SECONDS
    # Retries of transient provider failures (attempts include the first).
    retry_attempts: int = 3
    retry_base_delay_seconds: float = 0.5
    retry_max_delay_seconds: float = 8.0
    retry_after_cap_seconds: float = 10.0
    # Per-user token buckets: sustained rate per minute and burst (0 = no limit).
    chat_rate_per_minute: float = 600.0
    chat_burst: int = 60
    testkey_rate_per_minute: float = 60.0
    testkey_burst: int = 10
    # Open StreamChat calls per user (0 = no limit), and the lease of a slot in Redis.
    max_concurrent_streams: int = 100
    stream_lease_seconds: float = 30.0
    # Shared limits (unset: per process), their key prefix, and what a Redis outage does.
    redis_url: Secret = field(default_factory=lambda: Secret(""))
    redis_prefix: str = "rmllm:"
    redis_failure_mode: str = "open"
    # The one HTTP connection pool towards providers.
    http_max_connections: int = 8192
    # Usage records: sent to the vault every this many seconds or this many records,
    # held in a buffer of at most this many while the vault cannot take them.
    usage_flush_seconds: float = 0.2
    usage_batch_records: int = 500
    usage_buffer_records: int = 100_000
    # Where provider connections may go beyond public addresses (llm_service.netpolicy).
    endpoint_policy: EndpointPolicy = field(default_factory=EndpointPolicy.default)
    # Server-side bounds of every provider exchange, whatever the caller's deadline.
    upstream: UpstreamLimits = field(default_factory=UpstreamLimits)
    # Answer characters a unary Chat collects (StreamChat forwards and keeps none).
    chat_max_answer_chars: int = 2_000_000
    # Request size limits (images and documents travel inline).
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    max_document_bytes: int = 16 * 1024 * 1024
    # Prometheus and OpenTelemetry opt-ins (rmllm_common.telemetry).
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        listen: str | None = None,
        data_dir: str | None = None,
        log_level: str | None = None,
        workers: int | None = None,
        metrics_listen: str | None = None,
    ) -> LLMSettings:
        """Read and validate settings; share the service credential file on first run."""
        level = parse.log_level(env, log_level)
        directory = Path(data_dir).expanduser() if data_dir else state.default_data_dir(env)
        return cls(
            service_token=parse.service_credential(env, directory),
            listen=check_address("--listen", listen or env.get("RMLLM_LLM_LISTEN") or DEFAULT_LISTEN),
            vault_addr=check_address(
                "RMLLM_VAULT_ADDR", env.get("RMLLM_VAULT_ADDR") or DEFAULT_VAULT_ADDR, targets=True
            ),
            allow_custom_base_url=_flag(env, "RMLLM_ALLOW_CUSTOM_BASE_URL"),
            grace_seconds=_number(env, "RMLLM_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 3600.0),
            log_level=level,
            workers=parse.workers(env, workers),
            vault_timeout_seconds=_number(env, "RMLLM_VAULT_TIMEOUT_SECONDS", 10.0, 0.1, 300.0),
            credential_cache_seconds=_number(
                env,
                "RMLLM_CREDENTIAL_CACHE_SECONDS",
                DEFAULT_CREDENTIAL_CACHE_SECONDS,
                0.0,
                MAX_CREDENTIAL_CACHE_SECONDS,
            ),
            retry_attempts=_integer(env, "RMLLM_RETRY_ATTEMPTS", 3, 1, 10),
            retry_base_delay_seconds=_number(env, "RMLLM_RETRY_BASE_DELAY_SECONDS", 0.5, 0.0, 60.0),
            retry_max_delay_seconds=_number(env, "RMLLM_RETRY_MAX_DELAY_SECONDS", 8.0, 0.0, 300.0),
            retry_after_cap_seconds=_number(env, "RMLLM_RETRY_AFTER_CAP_SECONDS", 10.0, 0.0, 300.0),
            chat_rate_per_minute=_number(env, "RMLLM_CHAT_RATE_PER_MINUTE", 600.0, 0.0, 1e9),
            chat_burst=_integer(env, "RMLLM_CHAT_BURST", 60, 1, 1_000_000),
            testkey_rate_per_minute=_number(env, "RMLLM_TESTKEY_RATE_PER_MINUTE", 60.0, 0.0, 1e9),
            testkey_burst=_integer(env, "RMLLM_TESTKEY_BURST", 10, 1, 1_000_000),
            http_max_connections=_integer(env, "RMLLM_HTTP_MAX_CONNECTIONS", 8192, 1, 1_000_000),
            usage_flush_seconds=_number(env, "RMLLM_USAGE_FLUSH_SECONDS", 0.2, 0.01, 10.0),
            usage_batch_records=_integer(env, "RMLLM_USAGE_BATCH_RECORDS", 500, 1, 1000),
            usage_buffer_records=_integer(env, "RMLLM_USAGE_BUFFER_RECORDS", 100_000, 1000, 10_000_000),
            endpoint_policy=_endpoint_policy(env),
            upstream=_upstream_limits(env),
            chat_max_answer_chars=_integer(env, "RMLLM_CHAT_MAX_ANSWER_CHARS", 2_000_000, 1, 100_000_000),
            max_concurrent_streams=_integer(env, "RMLLM_MAX_CONCURRENT_STREAMS", 100, 0, 1_000_000),
            stream_lease_seconds=_number(env, "RMLLM_STREAM_LEASE_SECONDS", 30.0, 1.0, 3600.0),
            redis_url=_redis_url(env),
            redis_prefix=_redis_prefix(env),
            redis_failure_mode=_choice(env, "RMLLM_REDIS_FAILURE_MODE", REDIS_FAILURE_MODES),
            max_request_bytes=_integer(env, "RMLLM_MAX_REQUEST_BYTES", 32 * MIB, 4 * MIB + 65536, 512 * MIB),
            max_image_bytes=_integer(env, "RMLLM_MAX_IMAGE_BYTES", 5 * MIB, 1024, 256 * MIB),
            max_document_bytes=_integer(env, "RMLLM_MAX_DOCUMENT_BYTES", 16 * MIB, 1024, 256 * MIB),
            telemetry=_telemetry(env, metrics_listen),
        )


def _telemetry(env: Mapping[str, str], metrics_listen: str | None) -> TelemetrySettings:
    try:
        return TelemetrySettings.from_env(env, metrics_listen)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _endpoint_policy(env: Mapping[str, str]) -> EndpointPolicy:
    raw = env.get("RMLLM_ALLOWED_ENDPOINT_NETWORKS", "").strip() or DEFAULT_ALLOWED_ENDPOINT_NETWORKS
    try:
        return EndpointPolicy.parse(raw)
    except ValueError as exc:
        raise SettingsError(
            f"RMLLM_ALLOWED_ENDPOINT_NETWORKS: {exc}; give comma-separated networks such as "
            f"10.0.0.0/8,192.168.1.20:8000,[::1]:11434, or none (default {DEFAULT_ALLOWED_ENDPOINT_NETWORKS})"
        ) from None


def _upstream_limits(env: Mapping[str, str]) -> UpstreamLimits:
    return UpstreamLimits(
        connect_timeout_seconds=_number(env, "RMLLM_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10.0, 0.1, 300.0),
        read_idle_timeout_seconds=_number(env, "RMLLM_UPSTREAM_READ_IDLE_SECONDS", 120.0, 0.1, 3600.0),
        max_call_seconds=_number(env, "RMLLM_UPSTREAM_MAX_CALL_SECONDS", 900.0, 1.0, 86_400.0),
        max_response_bytes=_integer(env, "RMLLM_UPSTREAM_MAX_RESPONSE_BYTES", 64 * MIB, KIB, 1 << 40),
        max_events=_integer(env, "RMLLM_UPSTREAM_MAX_EVENTS", 500_000, 1, 1_000_000_000),
        max_event_bytes=_integer(env, "RMLLM_UPSTREAM_MAX_EVENT_BYTES", 1 * MIB, 1 * KIB, 1 << 30),
        max_error_bytes=_integer(env, "RMLLM_UPSTREAM_MAX_ERROR_BYTES", 8 * KIB, 256, 1 * MIB),
        max_json_bytes=_integer(env, "RMLLM_UPSTREAM_MAX_JSON_BYTES", 8 * MIB, 1 * KIB, 1 << 30),
    )


def _redis_url(env: Mapping[str, str]) -> Secret:
    """``RMLLM_REDIS_URL`` (it may carry a password, so it is held as a Secret)."""
    raw = env.get("RMLLM_REDIS_URL", "").strip()
    if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            "RMLLM_REDIS_URL must look like redis://[:password@]host:6379/0 (or rediss://, unix://)"
        )
    if raw:
        # The client reads the URL's options (and a rediss:// URL's certificates) without
        # connecting: a wrong one stops the start here, with a line, not a traceback per worker.
        # Imported only then: a process without Redis does not load redis-py.
        from llm_service.redis_pipe import PipelinedRedis  # noqa: PLC0415

        try:
            PipelinedRedis(raw, timeout=1)
        except (ValueError, OSError) as exc:  # OSError: a certificate file, ssl.SSLError
            raise SettingsError(f"RMLLM_REDIS_URL: {exc}") from None
    return Secret(raw)


def _redis_prefix(env: Mapping[str, str]) -> str:
    raw = env.get("RMLLM_REDIS_PREFIX", "rmllm:").strip()
    if not _REDIS_PREFIX.match(raw):
        raise SettingsError(
            "RMLLM_REDIS_PREFIX must be at most 64 characters: letters, digits and : . _ { } -"
        )
    return raw


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {raw[:40]!r}")
    return raw


__all__ = ["DEFAULT_LISTEN", "DEFAULT_VAULT_ADDR", "LLMSettings", "SettingsError", "check_address"]
