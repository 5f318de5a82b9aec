"""Failures through the live path: each yields the contract's status and reason, and a
cancelled stream closes the upstream response (the fake provider sees the disconnect)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest
from fakes import transcripts
from fakes.harness import KEYS
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc
from testkit import grpcurl
from testkit.llm_harness import BAD_BEARERS
from testkit.stack import Stack

from clients import Client
from clients import errors as cerr


@pytest.fixture(scope="module")
def client(stack: Stack, token: str) -> Iterator[Client]:
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as c:
        c.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        c.put_config("anthropic", KEYS["anthropic"], base_url=stack.base_url("anthropic"))
        yield c


def test_no_key_stored(client: Client) -> None:
    with pytest.raises(cerr.KeyNotConfigured) as caught:
        client.chat("google", "Hello")
    assert caught.value.reason == "KEY_NOT_CONFIGURED"
    assert caught.value.provider == "google"


def test_provider_rejects_the_key(stack: Stack, client: Client) -> None:
    stack.enqueue({"canned": ["openai", "bad_key"]})
    with pytest.raises(cerr.ProviderKeyInvalid) as caught:
        client.chat("openai", "Hello")
    assert caught.value.code.name == "FAILED_PRECONDITION"
    assert KEYS["openai"] not in str(caught.value) and KEYS["openai"][-12:] not in str(caught.value)


def test_provider_rate_limit_carries_retry_info(stack: Stack, client: Client) -> None:
    stack.enqueue({"canned": ["anthropic", "rate_limited"]})
    with pytest.raises(cerr.ProviderRateLimited) as caught:
        client.chat("anthropic", "Hello")
    assert caught.value.code.name == "RESOURCE_EXHAUSTED"
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


def test_provider_outage_is_unavailable(stack: Stack, client: Client) -> None:
    stack.enqueue({"canned": ["anthropic", "overloaded"]})
    with pytest.raises(cerr.ProviderUnavailable):
        client.chat("anthropic", "Hello")


def test_truncated_stream_is_never_a_success(stack: Stack, client: Client, token: str) -> None:
    cut = transcripts.load("openai_basic").end_offset("openai")
    stack.enqueue({"transcript": "openai_basic", "truncate_at": cut, "chunks": [9]})
    deltas: list[str] = []
    with pytest.raises(cerr.UpstreamStreamTruncated), client.stream_chat("openai", "Hello") as stream:
        deltas.extend(stream)
    # What arrived is the transcript's text up to the cut (a dropped connection may
    # also discard bytes the gateway had not read yet), and no `done`.
    assert transcripts.load("openai_basic").expect["text"].startswith("".join(deltas))
    # grpcurl sees the same: deltas, then UNAVAILABLE, and no `done` message.
    stack.enqueue({"transcript": "openai_basic", "truncate_at": cut})
    body = {"provider": "openai", "messages": [{"role": "ROLE_USER", "content": "Hello"}]}
    result = grpcurl.run(
        stack.llm.address, "realmultillm.llm.v1.LLMService/StreamChat", data=body, token=token
    )
    assert result.returncode != 0
    assert "Unavailable" in result.stderr and "UPSTREAM_STREAM_TRUNCATED" in result.stderr
    assert '"done"' not in result.stdout


def test_cancelled_stream_closes_the_upstream_response(stack: Stack, client: Client) -> None:
    stack.reset_fake()
    stack.enqueue({"pieces": ["tick "] * 200, "delay": 0.05, "route": "chat"})
    with client.stream_chat("openai", "Count slowly") as stream:
        first = next(iter(stream))
        assert first == "tick "
        stream.cancel()
    deadline = time.monotonic() + 10
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        records = [r for r in stack.requests() if r["route"] == "chat"]
        if records and records[-1]["finished"]:
            record = records[-1]
            break
        time.sleep(0.05)
    assert record, "the fake never saw the request end"
    assert record["disconnected"] is True
    assert record["outcome"] == "disconnected"


def test_caller_deadline_bounds_a_hanging_provider(stack: Stack, client: Client) -> None:
    stack.enqueue({"transcript": "openai_basic", "hang": True})
    with pytest.raises(cerr.DeadlineExceeded):
        client.chat("openai", "Hello", timeout=1.0)


def test_bad_request_names_the_field(client: Client) -> None:
    with pytest.raises(cerr.InvalidRequest) as caught:
        client.chat("openai", "Hello", temperature=3.5)
    assert [v.field for v in caught.value.field_violations] == ["temperature"]
    with pytest.raises(cerr.UnknownProvider):
        client.chat("no-such-provider", "Hello")


def test_grpcurl_shows_error_info(stack: Stack, token: str) -> None:
    body = {"provider": "google", "messages": [{"role": "ROLE_USER", "content": "Hello"}]}
    result = grpcurl.run(stack.llm.address, "realmultillm.llm.v1.LLMService/Chat", data=body, token=token)
    assert result.returncode != 0
    assert "FailedPrecondition" in result.stderr
    details = [
        json.loads(line.split(")", 1)[1]) for line in result.stderr.splitlines() if line.strip()[:2] == "1)"
    ]
    assert details and details[0]["reason"] == "KEY_NOT_CONFIGURED"
    assert details[0]["domain"] == "realmultillm" and details[0]["metadata"]["provider"] == "google"


@pytest.mark.parametrize("metadata", BAD_BEARERS.values(), ids=BAD_BEARERS.keys())
def test_both_services_refuse_a_bad_bearer_with_one_message(
    stack: Stack, metadata: tuple[tuple[str, str], ...]
) -> None:
    answers = []
    with grpc.insecure_channel(stack.llm.address) as llm, grpc.insecure_channel(stack.vault.address) as vault:
        for call in (
            lambda: llm_pb2_grpc.LLMServiceStub(llm).ListProviders(
                llm_pb2.ListProvidersRequest(), metadata=metadata, timeout=10
            ),
            lambda: vault_pb2_grpc.VaultServiceStub(vault).ListProviderConfigs(
                vault_pb2.ListProviderConfigsRequest(), metadata=metadata, timeout=10
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            answers.append((caught.value.code(), caught.value.details()))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED
