"""The error mapping of CONTRACT.md §6 through a real server, for Chat and StreamChat.

Each adapter error class and each vault failure reaches the caller as its code,
exactly one ErrorInfo reason (with ``provider`` in its metadata where a provider is
involved), RetryInfo where waiting helps, and never a success for a broken stream.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from testkit.llm_harness import (
    SERVICE_TOKEN,
    LLMHarness,
    auth,
    chat_request,
    llm_harness,
    rich_error,
    stream_request,
)
from testkit.llm_scripted import STALL, answer

from llm_service.adapters.base import TextDelta
from rmllm_common import errors

ADAPTER_ERRORS: list[tuple[errors.RmllmError, grpc.StatusCode, str, float | None]] = [
    (
        errors.ProviderKeyInvalid("the provider rejected the key", provider="openai"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVIDER_KEY_INVALID",
        None,
    ),
    (
        errors.ProviderRateLimited("slow down", provider="openai", retry_after=42.0),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
        42.0,
    ),
    (
        errors.ProviderQuotaExhausted("no credit", provider="openai"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_QUOTA_EXHAUSTED",
        None,
    ),
    (
        errors.ProviderUnavailable("503", provider="openai"),
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
        None,
    ),
    (
        errors.UpstreamStreamTruncated("cut", provider="openai"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_STREAM_TRUNCATED",
        None,
    ),
    (
        errors.DeadlineExceeded("timeout", provider="openai"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        None,
    ),
    (
        errors.InvalidRequest("unknown model", provider="openai"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        None,
    ),
    (errors.ProviderError("odd answer", provider="openai"), grpc.StatusCode.UNKNOWN, "PROVIDER_ERROR", None),
]


async def _chat_error(llm: LLMHarness, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(**kwargs), metadata=auth())
    return caught.value


async def _stream_error(llm: LLMHarness, **kwargs: Any) -> tuple[list[Any], grpc.aio.AioRpcError]:
    got: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in llm.stub.StreamChat(stream_request(**kwargs), metadata=auth()):
            got.append(message)
    return got, caught.value


@pytest.mark.parametrize(
    ("error", "code", "reason", "retry"), ADAPTER_ERRORS, ids=lambda v: getattr(v, "reason", "")
)
async def test_adapter_error_before_any_delta(
    llm: LLMHarness, error: errors.RmllmError, code: grpc.StatusCode, reason: str, retry: float | None
) -> None:
    llm.adapter.scripts = [[error]]
    for failed in (await _chat_error(llm), (await _stream_error(llm))[1]):
        rich = rich_error(failed)
        assert (rich.code, rich.reason) == (code, reason)
        assert rich.metadata["provider"] == "openai"
        assert rich.retry_delay == retry


@pytest.mark.parametrize(
    ("error", "code", "reason", "retry"), ADAPTER_ERRORS, ids=lambda v: getattr(v, "reason", "")
)
async def test_adapter_error_after_deltas_ends_the_stream_with_its_status(
    llm: LLMHarness, error: errors.RmllmError, code: grpc.StatusCode, reason: str, retry: float | None
) -> None:
    llm.adapter.scripts = [[TextDelta("par"), TextDelta("tial"), error]]
    got, failed = await _stream_error(llm)
    assert [m.delta for m in got] == ["par", "tial"]
    assert not any(m.HasField("done") for m in got)
    assert (rich_error(failed).code, rich_error(failed).reason) == (code, reason)
    assert len(llm.adapter.calls) == 1  # never retried after a delta
    assert llm.sleeps == []
    # Chat never returns the partial text as a success either.
    assert rich_error(await _chat_error(llm)).reason == reason


async def test_stream_that_ends_without_finished_is_truncated(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[TextDelta("half")]]
    got, failed = await _stream_error(llm)
    assert [m.delta for m in got] == ["half"]
    rich = rich_error(failed)
    assert (rich.code, rich.reason, rich.metadata["provider"]) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_STREAM_TRUNCATED",
        "openai",
    )
    assert rich_error(await _chat_error(llm)).reason == "UPSTREAM_STREAM_TRUNCATED"


async def test_empty_stream_is_truncated(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[]]
    assert rich_error(await _chat_error(llm)).reason == "UPSTREAM_STREAM_TRUNCATED"


async def test_unexpected_adapter_exception_is_internal_with_request_id(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[RuntimeError("adapter bug")]]
    rich = rich_error(await _chat_error(llm))
    assert (rich.code, rich.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert rich.metadata["request_id"]
    assert "adapter bug" not in rich.message


async def test_no_key_configured(llm: LLMHarness) -> None:
    rich = rich_error(await _chat_error(llm, provider="gemini"))
    assert (rich.code, rich.reason, rich.metadata["provider"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "KEY_NOT_CONFIGURED",
        "google",
    )
    assert "PutProviderConfig" in rich.message
    assert llm.adapter.calls == []


async def test_key_decryption_failed(llm: LLMHarness) -> None:
    llm.vault.fail_with = errors.KeyDecryptionFailed("seed changed", provider="openai")
    rich = rich_error(await _chat_error(llm))
    assert (rich.code, rich.reason, rich.metadata["provider"]) == (
        grpc.StatusCode.INTERNAL,
        "KEY_DECRYPTION_FAILED",
        "openai",
    )


async def test_vault_down_is_vault_unavailable_within_the_deadline() -> None:
    async with llm_harness(vault_addr="127.0.0.1:9") as llm:
        for attempt in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await llm.stub.Chat(chat_request(), metadata=auth(), timeout=5)
            rich = rich_error(caught.value)
            assert (rich.code, rich.reason) == (grpc.StatusCode.UNAVAILABLE, "VAULT_UNAVAILABLE"), attempt
            assert rich.retry_delay is not None


async def test_vault_rejecting_the_service_credential_is_logged_for_the_operator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with llm_harness() as llm:
        llm.vault.service_token = "some-other-credential-000000000000000"
        rich = rich_error(await _chat_error(llm))
    assert (rich.code, rich.reason) == (grpc.StatusCode.UNAVAILABLE, "VAULT_UNAVAILABLE")
    assert "RMLLM_SERVICE_TOKEN" in rich.message
    operator = [
        r for r in caplog.records if r.levelname == "ERROR" and "RMLLM_SERVICE_TOKEN" in r.getMessage()
    ]
    assert len(operator) == 1
    assert SERVICE_TOKEN not in caplog.text


async def test_vault_stalling_past_the_caller_deadline_is_deadline_exceeded(llm: LLMHarness) -> None:
    llm.vault.stall = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth(), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_vault_stalling_past_its_own_timeout_is_vault_unavailable() -> None:
    async with llm_harness({"RMLLM_VAULT_TIMEOUT_SECONDS": "0.2"}) as llm:
        llm.vault.stall = True
        rich = rich_error(await _chat_error(llm))
    assert (rich.code, rich.reason) == (grpc.StatusCode.UNAVAILABLE, "VAULT_UNAVAILABLE")


async def test_adapter_stalling_past_the_deadline(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[TextDelta("a"), STALL]]
    got: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # Long enough for the first delta to arrive on a loaded machine; the stall outlasts any.
        async for message in llm.stub.StreamChat(stream_request(), metadata=auth(), timeout=3):
            got.append(message)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [m.delta for m in got] == ["a"]
    await llm.adapter.closed_event.wait()  # the upstream stream was closed
    assert llm.adapter.closed == llm.adapter.opened == 1
    timeout = llm.adapter.calls[0].timeout
    assert timeout is not None and 0 < timeout < 3.1  # gRPC rounds the sent deadline up


async def test_no_deadline_means_no_adapter_timeout(llm: LLMHarness) -> None:
    llm.adapter.scripts = [answer("ok")]
    await llm.stub.Chat(chat_request(), metadata=auth())
    assert llm.adapter.calls[0].timeout is None


async def test_an_adapter_error_without_provider_gets_one(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[errors.ProviderError("no provider named")]]
    rich = rich_error(await _chat_error(llm, provider="claude"))
    assert (rich.reason, rich.metadata["provider"]) == ("PROVIDER_ERROR", "anthropic")
