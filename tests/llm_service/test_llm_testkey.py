"""TestKey: explicit or stored key, the probe's outcome as a reason, the base-URL policy."""

from __future__ import annotations

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import ALICE_OPENAI_KEY, BOB, LLMHarness, auth, llm_harness, rich_error

from llm_service.adapters.base import ProbeOutcome, ProbeResult

CANDIDATE = "sk-candidate-PLANTED-key-5d6e"


async def test_explicit_key_is_probed_after_authenticating_the_caller(llm: LLMHarness) -> None:
    reply = await llm.stub.TestKey(
        llm_pb2.TestKeyRequest(provider="openai-api", api_key=CANDIDATE), metadata=auth(BOB)
    )
    assert reply.valid
    assert reply.reason == llm_pb2.TEST_KEY_REASON_VALID
    assert reply.provider == "openai"
    assert reply.message == "the provider accepted the key"
    assert reply.latency_ms >= 0
    [(endpoint, _)] = llm.adapter.probe_calls
    assert endpoint.api_key.reveal() == CANDIDATE
    assert endpoint.base_url == "https://api.openai.com/v1"
    assert llm.vault.methods() == ["AuthenticateToken"]


async def test_stored_key_is_probed_when_none_is_given(llm: LLMHarness) -> None:
    await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai"), metadata=auth())
    [(endpoint, _)] = llm.adapter.probe_calls
    assert endpoint.api_key.reveal() == ALICE_OPENAI_KEY
    assert llm.vault.methods() == ["ResolveCredentials"]


async def test_stored_key_missing(llm: LLMHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="google"), metadata=auth())
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_CONFIGURED")
    assert llm.adapter.probe_calls == []


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (ProbeOutcome.VALID, llm_pb2.TEST_KEY_REASON_VALID),
        (ProbeOutcome.INVALID_KEY, llm_pb2.TEST_KEY_REASON_INVALID_KEY),
        (ProbeOutcome.QUOTA_EXHAUSTED, llm_pb2.TEST_KEY_REASON_QUOTA_EXHAUSTED),
        (ProbeOutcome.RATE_LIMITED, llm_pb2.TEST_KEY_REASON_RATE_LIMITED),
        (ProbeOutcome.UNREACHABLE, llm_pb2.TEST_KEY_REASON_UNREACHABLE),
        (ProbeOutcome.UNKNOWN, llm_pb2.TEST_KEY_REASON_UNKNOWN),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
async def test_probe_outcome_maps_to_reason(llm: LLMHarness, outcome: ProbeOutcome, reason: int) -> None:
    llm.adapter.probe = ProbeResult(outcome, f"outcome {outcome.name}")
    reply = await llm.stub.TestKey(
        llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE), metadata=auth()
    )
    assert reply.reason == reason
    assert reply.valid == (outcome is ProbeOutcome.VALID)
    assert reply.message == f"outcome {outcome.name}"


@pytest.mark.parametrize(
    ("api_key", "base_url", "field"),
    [
        ("sk-has space-PLANTED", "", "api_key"),
        ("sk-new\nline-PLANTED", "", "api_key"),
        ("sk-PLANTED-" + "k" * 4096, "", "api_key"),
        (CANDIDATE, "http://127.0.0.1:9/v1", "base_url"),
        (CANDIDATE, "ftp://api.openai.com/v1", "base_url"),
        (CANDIDATE, "https://user:pw@api.openai.com/v1", "base_url"),
        (CANDIDATE, "https://api.openai.com/v1?x=1", "base_url"),
        (CANDIDATE, "not a url", "base_url"),
    ],
)
async def test_bad_testkey_fields(llm: LLMHarness, api_key: str, base_url: str, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.TestKey(
            llm_pb2.TestKeyRequest(provider="openai", api_key=api_key, base_url=base_url), metadata=auth()
        )
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [f for f, _ in rich.violations] == [field]
    assert "PLANTED" not in rich.message and "PLANTED" not in str(rich.violations)
    assert llm.vault.calls == []


async def test_unknown_provider(llm: LLMHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="acme", api_key=CANDIDATE), metadata=auth())
    assert rich_error(caught.value).reason == "UNKNOWN_PROVIDER"


async def test_default_base_url_is_always_allowed(llm: LLMHarness) -> None:
    await llm.stub.TestKey(
        llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE, base_url="https://api.openai.com/v1/"),
        metadata=auth(),
    )
    assert llm.adapter.probe_calls[0][0].base_url == "https://api.openai.com/v1"


async def test_custom_base_url_for_a_self_hosted_provider(llm: LLMHarness) -> None:
    await llm.stub.TestKey(
        llm_pb2.TestKeyRequest(provider="ollama", base_url="http://127.0.0.1:11434/v1"), metadata=auth(BOB)
    )
    endpoint = llm.adapter.probe_calls[0][0]
    assert (endpoint.base_url, endpoint.api_key.reveal()) == ("http://127.0.0.1:11434/v1", "")


async def test_custom_base_url_allowed_by_the_operator() -> None:
    async with llm_harness({"RMLLM_ALLOW_CUSTOM_BASE_URL": "1"}) as llm:
        await llm.stub.TestKey(
            llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE, base_url="http://127.0.0.1:9/v1"),
            metadata=auth(),
        )
        assert llm.adapter.probe_calls[0][0].base_url == "http://127.0.0.1:9/v1"


async def test_probe_gets_the_callers_deadline(llm: LLMHarness) -> None:
    await llm.stub.TestKey(
        llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE), metadata=auth(), timeout=5
    )
    timeout = llm.adapter.probe_calls[0][1]
    assert timeout is not None and 0 < timeout < 5.1  # gRPC rounds the sent deadline up
