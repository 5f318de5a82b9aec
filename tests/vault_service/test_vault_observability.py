"""The vault's observability, in process: RPCs by method, code and reason, auth failures by
reason, database and audit times, decrypt failures (Prometheus), the request id in the
trailing metadata, and the call's JSON log line."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import grpc
import pytest
from prometheus_client import REGISTRY
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Vault, md

from rmllm_common.logs import JsonFormatter
from rmllm_common.secret import Secret
from rmllm_common.telemetry import TelemetrySettings

KEY = "sk-alice-0123456789abcdefWXYZ"
SERVICE = md(SERVICE_TOKEN)
METRICS = TelemetrySettings(metrics_listen="127.0.0.1:0")  # build_server records; only `serve` listens


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_vault_metrics_and_call_lines(
    vault_factory: Callable[..., Awaitable[Vault]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rmllm.calls")
    vault = await vault_factory(telemetry=METRICS)
    token = vault.make_user("alice")
    before = {
        "put": value("rmllm_vault_requests_total", method="PutProviderConfig", code="OK", reason=""),
        "resolve": value("rmllm_vault_request_duration_seconds_count", method="ResolveCredentials"),
        "bad_token": value("rmllm_vault_auth_failures_total", reason="TOKEN_INVALID"),
        "service": value("rmllm_vault_auth_failures_total", reason="SERVICE_CREDENTIAL_REQUIRED"),
        "db": value(
            "rmllm_vault_db_transaction_seconds_count", operation="resolve_with_limits"
        ),  # the servicer's resolve
        "audit": value("rmllm_vault_audit_append_seconds_count"),
        "decrypt": value("rmllm_vault_decrypt_failures_total"),
    }
    call = vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY),
        metadata=(*md(token), ("x-request-id", "vault-req-1")),
    )
    await call
    assert ("x-request-id", "vault-req-1") in tuple(await call.trailing_metadata())
    await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
    )
    for metadata in (md("rmk_unknown"), md(token)):  # service RPCs refuse anything but the credential
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await vault.stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=metadata
            )
        assert [v for k, v in caught.value.trailing_metadata() or () if k == "x-request-id"]
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md("rmk_unknown"))
    await vault.handle.stop(0)
    # The same database under another seed: the stored key cannot be decrypted.
    changed = await vault_factory(
        telemetry=METRICS, seed=Secret("N3w-s33d_" + "Hk2Lp9Qz4Rt7Vw1Xy5Bc8Df0Gj6Mn")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await changed.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
        )

    assert (
        value("rmllm_vault_requests_total", method="PutProviderConfig", code="OK", reason="")
        == before["put"] + 1
    )
    assert (
        value("rmllm_vault_request_duration_seconds_count", method="ResolveCredentials")
        == before["resolve"] + 4
    )
    assert value("rmllm_vault_auth_failures_total", reason="TOKEN_INVALID") == before["bad_token"] + 1
    assert (
        value("rmllm_vault_auth_failures_total", reason="SERVICE_CREDENTIAL_REQUIRED")
        == before["service"] + 2
    )
    assert (
        value("rmllm_vault_db_transaction_seconds_count", operation="resolve_with_limits") == before["db"] + 2
    )
    assert value("rmllm_vault_audit_append_seconds_count") >= before["audit"] + 3  # put, resolve, failure
    assert value("rmllm_vault_decrypt_failures_total") == before["decrypt"] + 1
    assert (
        value(
            "rmllm_vault_requests_total",
            method="ResolveCredentials",
            code="INTERNAL",
            reason="KEY_DECRYPTION_FAILED",
        )
        >= 1
    )

    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "rmllm.calls"]
    put = next(line for line in lines if line["request_id"] == "vault-req-1")
    assert (put["service"], put["method"], put["code"], put["reason"]) == (
        "vault",
        "PutProviderConfig",
        "OK",
        "",
    )
    assert put["latency_seconds"] >= 0
