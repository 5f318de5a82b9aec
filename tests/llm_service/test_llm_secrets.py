"""Nothing that reaches a caller or a log contains a key or a token.

The caller's stored key, an explicit TestKey key, the user token and the service
credential are planted, every error path is driven with DEBUG logging captured,
and every status message, status detail and log line (formatted as the service
formats them, extras included) is searched for them.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import (
    ALICE,
    ALICE_ANTHROPIC_KEY,
    ALICE_OPENAI_KEY,
    SERVICE_TOKEN,
    LLMHarness,
    auth,
    chat_request,
    llm_harness,
    stream_request,
)
from testkit.llm_scripted import ScriptedAdapter

from llm_service.adapters.base import (
    ChatEvent,
    ChatParams,
    Endpoint,
    ListedModel,
    ProbeOutcome,
    ProbeResult,
    TextDelta,
)
from rmllm_common import errors
from rmllm_common.logs import JsonFormatter

CANDIDATE = "sk-candidate-PLANTED-testkey-c0ffee"
SECRETS = (ALICE_OPENAI_KEY, ALICE_ANTHROPIC_KEY, CANDIDATE, ALICE, SERVICE_TOKEN, "PLANTED")


class LeakyAdapter(ScriptedAdapter):
    """Raises errors that carry the endpoint and params (whose repr must mask the key)."""

    mode: str = "internal"

    async def stream_chat(
        self, http: Any, endpoint: Endpoint, params: ChatParams, timeout: float | None
    ) -> Any:
        self.calls.append(None)  # type: ignore[arg-type]
        yield TextDelta(f"{endpoint.spec.id} said hi")
        if self.mode == "internal":
            raise RuntimeError(f"bug while talking to {endpoint!r} with {endpoint.api_key}")
        raise errors.ProviderError(f"mid-stream error for {endpoint.api_key}", provider=endpoint.spec.id)

    async def probe_key(self, http: Any, endpoint: Endpoint, timeout: float | None) -> ProbeResult:
        return ProbeResult(ProbeOutcome.INVALID_KEY, f"rejected {endpoint.api_key}")

    async def list_models(self, http: Any, endpoint: Endpoint, timeout: float | None) -> list[ListedModel]:
        raise errors.ProviderKeyInvalid(f"401 for {endpoint!r}", provider=endpoint.spec.id)


async def _collect(call: Any) -> list[str]:
    """Everything a caller can see of a call: messages, status message, status details."""
    seen: list[str] = []
    try:
        result = await call
        seen.append(str(result))
    except grpc.aio.AioRpcError as exc:
        seen.append(exc.details() or "")
        seen.extend(repr(value) for _, value in exc.trailing_metadata() or ())
    return seen


async def _collect_stream(call: Any) -> list[str]:
    seen: list[str] = []
    try:
        async for message in call:
            seen.append(str(message))
    except grpc.aio.AioRpcError as exc:
        seen.append(exc.details() or "")
        seen.extend(repr(value) for _, value in exc.trailing_metadata() or ())
    return seen


async def _drive(llm: LLMHarness, seen: list[str]) -> None:
    stub = llm.stub
    seen += await _collect(stub.Chat(chat_request(), metadata=auth()))
    seen += await _collect_stream(stub.StreamChat(stream_request(provider="claude"), metadata=auth()))
    seen += await _collect(
        stub.TestKey(llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE), metadata=auth())
    )
    seen += await _collect(
        stub.TestKey(llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE + " x"), metadata=auth())
    )
    seen += await _collect(stub.TestKey(llm_pb2.TestKeyRequest(provider="anthropic"), metadata=auth()))
    seen += await _collect(stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=auth()))
    seen += await _collect(stub.Chat(chat_request(provider="google"), metadata=auth()))
    seen += await _collect(stub.Chat(chat_request(temperature=9.0), metadata=auth()))
    seen += await _collect(stub.Chat(chat_request(), metadata=auth(ALICE + "x")))


@pytest.mark.parametrize("mode", ["internal", "provider"])
async def test_no_secret_reaches_a_caller_or_a_log(caplog: pytest.LogCaptureFixture, mode: str) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = LeakyAdapter()
    adapter.mode = mode
    seen: list[str] = []
    # Two TestKeys and one live ListModels use the burst of 3; the next TestKey is over it.
    async with llm_harness({"RMLLM_TESTKEY_BURST": "3"}, adapter=adapter) as llm:
        await _drive(llm, seen)
        seen += await _collect(  # over the TestKey limit
            llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai", api_key=CANDIDATE), metadata=auth())
        )
        llm.vault.fail_with = errors.KeyDecryptionFailed("cannot decrypt", provider="openai")
        seen += await _collect(llm.stub.Chat(chat_request(), metadata=auth()))
        llm.vault.fail_with = None
        llm.vault.service_token = "a-different-credential-000000000000000"
        seen += await _collect(llm.stub.Chat(chat_request(), metadata=auth()))
    async with llm_harness(vault_addr="127.0.0.1:9", adapter=adapter) as down:
        seen += await _collect(down.stub.Chat(chat_request(), metadata=auth(), timeout=5))
    formatter = JsonFormatter()
    logged = [formatter.format(record) for record in caplog.records]
    assert any(r.levelname == "ERROR" for r in caplog.records)  # the paths above did log
    assert any(r.levelname == "WARNING" for r in caplog.records)
    assert any("7a1c" in text for text in seen + logged)  # the masked hint is all that shows
    for text in seen + logged:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:300])


def test_endpoint_and_params_reprs_mask_the_key() -> None:
    from rmllm_common.registry import default_registry
    from rmllm_common.secret import Secret

    spec = default_registry().resolve("openai")
    endpoint = Endpoint(spec, spec.base_url, Secret(ALICE_OPENAI_KEY))
    event: ChatEvent = TextDelta("x")
    assert ALICE_OPENAI_KEY not in repr(endpoint) + str(endpoint) + f"{endpoint.api_key}" + repr(event)
