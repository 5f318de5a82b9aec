"""LLMSettings: defaults, every variable validated with a message naming it, the CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from testkit import procs
from testkit.llm_harness import user_token

from llm_service.cli import main
from llm_service.settings import LLMSettings, SettingsError

TOKEN = "rms_JrlWV_yCtHiYNfpdWmKo5eWQLOzQhJUT5CXSFso7iDQ"  # random, as generated


def test_defaults() -> None:
    settings = LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN})
    assert settings.service_token.reveal() == TOKEN
    assert TOKEN not in repr(settings)
    assert (settings.listen, settings.vault_addr) == ("127.0.0.1:50051", "127.0.0.1:50052")
    assert not settings.allow_custom_base_url
    assert settings.credential_cache_seconds == 30  # on by default: the vault's watch stream keeps it honest
    assert (settings.max_concurrent_streams, settings.stream_lease_seconds) == (100, 30)
    assert not settings.redis_url and settings.redis_failure_mode == "open"
    assert (settings.retry_attempts, settings.retry_after_cap_seconds) == (3, 10.0)
    assert (settings.chat_rate_per_minute, settings.testkey_rate_per_minute) == (600, 60)
    assert settings.log_level == "info"
    mib = 1024 * 1024
    assert (settings.max_request_bytes, settings.max_image_bytes, settings.max_document_bytes) == (
        32 * mib,
        5 * mib,
        16 * mib,
    )


def test_size_limits_are_read() -> None:
    settings = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": TOKEN,
            "RMLLM_MAX_REQUEST_BYTES": "67108864",
            "RMLLM_MAX_IMAGE_BYTES": "1048576",
            "RMLLM_MAX_DOCUMENT_BYTES": "2048",
        }
    )
    assert (settings.max_request_bytes, settings.max_image_bytes, settings.max_document_bytes) == (
        64 * 1024 * 1024,
        1024 * 1024,
        2048,
    )


@pytest.mark.parametrize(
    "target", ["dns:///vault.internal:50052", "unix:/run/rmllm/vault.sock", "[::1]:50052"]
)
def test_vault_address_forms(target: str) -> None:
    assert (
        LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_VAULT_ADDR": target}).vault_addr == target
    )


def test_values_are_read() -> None:
    settings = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": TOKEN,
            "RMLLM_VAULT_ADDR": "vault.internal:7000",
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
            "RMLLM_CREDENTIAL_CACHE_SECONDS": "2.5",
            "RMLLM_RETRY_ATTEMPTS": "5",
            "RMLLM_CHAT_RATE_PER_MINUTE": "0",
            "RMLLM_SHUTDOWN_GRACE_SECONDS": "3",
            "RMLLM_LOG_LEVEL": "DEBUG",
        },
        listen="[::1]:0",
    )
    assert settings.vault_addr == "vault.internal:7000"
    assert settings.allow_custom_base_url
    assert settings.credential_cache_seconds == 2.5
    assert settings.retry_attempts == 5
    assert settings.chat_rate_per_minute == 0
    assert settings.grace_seconds == 3
    assert settings.log_level == "debug"
    assert settings.listen == "[::1]:0"


def test_redis_settings() -> None:
    url = "redis://:pw-not-to-print@127.0.0.1:6379/0"
    settings = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": TOKEN,
            "RMLLM_REDIS_URL": url,
            "RMLLM_REDIS_PREFIX": "team-a:",
            "RMLLM_REDIS_FAILURE_MODE": "Closed",
            "RMLLM_MAX_CONCURRENT_STREAMS": "0",
        }
    )
    assert settings.redis_url.reveal() == url and "pw-not-to-print" not in repr(settings)
    assert (settings.redis_prefix, settings.redis_failure_mode) == ("team-a:", "closed")
    assert settings.max_concurrent_streams == 0
    for name, value, fragment in (
        ("RMLLM_REDIS_URL", "http://127.0.0.1:6379", "redis://"),
        ("RMLLM_REDIS_URL", "redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "use rediss://"),
        ("RMLLM_REDIS_URL", "rediss://127.0.0.1:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
        ("RMLLM_REDIS_URL", "rediss://127.0.0.1:6380/0?ssl_ca_certs=/no/such/ca.pem", "No such file"),
        ("RMLLM_REDIS_URL", "unix://", "socket's path"),
        ("RMLLM_REDIS_FAILURE_MODE", "maybe", "open, closed"),
        ("RMLLM_REDIS_PREFIX", "has space", "at most 64"),
        ("RMLLM_CREDENTIAL_CACHE_SECONDS", "61", "0 to 60"),
        ("RMLLM_STREAM_LEASE_SECONDS", "0", "1 to 3600"),
    ):
        with pytest.raises(SettingsError, match=fragment):
            LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN, name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RMLLM_CREDENTIAL_CACHE_SECONDS", "61"),
        ("RMLLM_CREDENTIAL_CACHE_SECONDS", "-1"),
        ("RMLLM_CREDENTIAL_CACHE_SECONDS", "soon"),
        ("RMLLM_RETRY_ATTEMPTS", "0"),
        ("RMLLM_RETRY_ATTEMPTS", "2.5"),
        ("RMLLM_RETRY_AFTER_CAP_SECONDS", "nan"),
        ("RMLLM_CHAT_RATE_PER_MINUTE", "-5"),
        ("RMLLM_TESTKEY_BURST", "0"),
        ("RMLLM_SHUTDOWN_GRACE_SECONDS", "inf"),
        ("RMLLM_ALLOW_CUSTOM_BASE_URL", "maybe"),
        ("RMLLM_VAULT_ADDR", "no-port"),
        ("RMLLM_VAULT_ADDR", "host:99999"),
        ("RMLLM_LOG_LEVEL", "loud"),
        ("RMLLM_SERVICE_TOKEN", "short"),
        ("RMLLM_SERVICE_TOKEN", "x" * 40 + " y"),
        ("RMLLM_HTTP_MAX_CONNECTIONS", "0"),
        ("RMLLM_MAX_REQUEST_BYTES", "1024"),  # below the 4 MiB of text a request may carry
        ("RMLLM_MAX_IMAGE_BYTES", "big"),
        ("RMLLM_MAX_DOCUMENT_BYTES", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN, name: value})
    assert name in str(caught.value)
    if name == "RMLLM_SERVICE_TOKEN":
        assert value not in str(caught.value)


def test_service_token_file_is_created_private(data_dir: Path) -> None:
    first = LLMSettings.from_env({"RMLLM_DATA_DIR": str(data_dir)})
    path = data_dir / "service_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LLMSettings.from_env({}, data_dir=str(data_dir)).service_token == first.service_token


def test_cli_refuses_bad_settings(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMLLM_RETRY_ATTEMPTS", "99")
    assert main(["serve", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RMLLM_RETRY_ATTEMPTS")


def test_served_process_answers_vault_unavailable_when_the_vault_is_down(data_dir: Path) -> None:
    running = procs.start(
        ["llm_service.cli", "serve", "--listen", "127.0.0.1:0", "--log-level", "debug"],
        {"RMLLM_DATA_DIR": str(data_dir), "RMLLM_VAULT_ADDR": "127.0.0.1:9", "RMLLM_SERVICE_TOKEN": TOKEN},
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = llm_pb2_grpc.LLMServiceStub(channel)
            request = llm_pb2.ChatRequest(
                provider="openai", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi")]
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.Chat(request, metadata=(("authorization", f"Bearer {user_token('x')}"),), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListProviders(llm_pb2.ListProvidersRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert running.stop() == 0
    assert TOKEN not in running.logs
    assert user_token("x") not in running.logs
