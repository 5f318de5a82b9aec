"""Chat and StreamChat through a real server: the one code path, settings, usage, auth."""

from __future__ import annotations

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import (
    ALICE,
    ALICE_ANTHROPIC_KEY,
    ALICE_OPENAI_KEY,
    BAD_BEARERS,
    BOB,
    SERVICE_TOKEN,
    LLMHarness,
    auth,
    chat_request,
    rich_error,
    stream_request,
    user_token,
)
from testkit.llm_scripted import answer, finished

from llm_service.adapters.base import FinishReason, TextDelta


async def test_chat_collects_what_stream_forwards(llm: LLMHarness) -> None:
    llm.adapter.scripts = [
        answer("Hel", "lo", "!", model="gpt-4o-mini", input_tokens=1000, output_tokens=2000)
    ]
    reply = await llm.stub.Chat(chat_request(), metadata=auth())
    assert reply.content == "Hello!"
    assert reply.finish_reason == llm_pb2.FINISH_REASON_STOP
    assert reply.model == "gpt-4o-mini"
    assert reply.provider == "openai"
    assert reply.response_id == "resp-1"
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.total_tokens) == (
        1000,
        2000,
        3000,
    )
    # gpt-4o-mini: 0.15 and 0.60 USD per 1M tokens
    assert reply.usage.cost_usd == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)

    stream = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
    assert [m.WhichOneof("event") for m in stream] == ["delta", "delta", "delta", "done"]
    assert "".join(m.delta for m in stream[:-1]) == reply.content
    done = stream[-1].done
    assert (done.finish_reason, done.model, done.provider, done.response_id) == (
        reply.finish_reason,
        reply.model,
        reply.provider,
        reply.response_id,
    )
    assert done.usage == reply.usage


async def test_key_and_endpoint_resolved_once_per_call(llm: LLMHarness) -> None:
    await llm.stub.Chat(chat_request(provider="openai-api"), metadata=auth())
    [call] = llm.adapter.calls
    assert call.endpoint.api_key.reveal() == ALICE_OPENAI_KEY
    assert call.endpoint.base_url == "https://api.openai.com/v1"
    assert call.endpoint.spec.id == "openai"
    [vault_call] = llm.vault.calls
    assert vault_call.method == "ResolveCredentials"
    assert vault_call.user_token == ALICE
    assert vault_call.provider == "openai"
    assert vault_call.metadata["authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert vault_call.metadata["x-request-id"]


async def test_request_id_is_forwarded_to_the_vault(llm: LLMHarness) -> None:
    await llm.stub.Chat(chat_request(), metadata=(*auth(), ("x-request-id", "req-42")))
    assert llm.vault.calls[0].metadata["x-request-id"] == "req-42"


async def test_model_and_params_precedence(llm: LLMHarness) -> None:
    llm.vault.keys[("u-alice", "anthropic")].temperature = 0.3
    llm.vault.keys[("u-alice", "anthropic")].max_tokens = 777
    # The user's settings fill what the request leaves unset...
    await llm.stub.Chat(chat_request(provider="claude"), metadata=auth())
    params = llm.adapter.calls[-1].params
    assert (params.model, params.temperature, params.max_tokens, params.top_p) == (
        "claude-haiku-4-5",
        0.3,
        777,
        None,
    )
    assert llm.adapter.calls[-1].endpoint.api_key.reveal() == ALICE_ANTHROPIC_KEY
    # ...request fields win over them...
    await llm.stub.Chat(
        chat_request(
            provider="anthropic",
            model="claude-opus-4-1",
            temperature=0.0,
            max_tokens=5,
            top_p=0.5,
            stop=["END"],
        ),
        metadata=auth(),
    )
    params = llm.adapter.calls[-1].params
    assert (params.model, params.temperature, params.max_tokens, params.top_p, params.stop) == (
        "claude-opus-4-1",
        0.0,
        5,
        0.5,
        ("END",),
    )
    # ...and the registry's defaults fill the rest (Anthropic needs max_tokens).
    llm.vault.keys[("u-alice", "anthropic")].default_model = ""
    llm.vault.keys[("u-alice", "anthropic")].max_tokens = None
    llm.vault.keys[("u-alice", "anthropic")].temperature = None
    await llm.stub.Chat(chat_request(provider="anthropic"), metadata=auth())
    params = llm.adapter.calls[-1].params
    assert (params.model, params.temperature, params.max_tokens) == ("claude-sonnet-4-5", None, 4096)


async def test_messages_reach_the_adapter_in_order(llm: LLMHarness) -> None:
    request = llm_pb2.ChatRequest(
        provider="openai",
        messages=[
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content="be brief"),
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi"),
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT, content="hello"),
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="more ü"),
        ],
    )
    await llm.stub.Chat(request, metadata=auth())
    got = [(m.role, m.content) for m in llm.adapter.calls[0].params.messages]
    assert got == [("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "more ü")]


async def test_keyless_provider_needs_no_stored_key(llm: LLMHarness) -> None:
    await llm.stub.Chat(chat_request(provider="ollama"), metadata=auth(BOB))
    [call] = llm.adapter.calls
    assert call.endpoint.api_key.reveal() == ""
    assert call.endpoint.base_url == "http://localhost:11434/v1"
    assert call.params.model == "llama3.2"
    assert llm.vault.methods() == ["ResolveCredentials", "AuthenticateToken"]


async def test_stored_custom_base_url_obeys_policy(llm: LLMHarness) -> None:
    llm.vault.keys[("u-alice", "openai")].base_url = "http://127.0.0.1:9/v1/"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth())
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "RMLLM_ALLOW_CUSTOM_BASE_URL" in error.message
    assert llm.adapter.calls == []


async def test_stored_custom_base_url_allowed_by_operator() -> None:
    from testkit.llm_harness import llm_harness

    async with llm_harness({"RMLLM_ALLOW_CUSTOM_BASE_URL": "1"}) as llm:
        llm.vault.keys[("u-alice", "openai")].base_url = "http://127.0.0.1:9/v1/"
        await llm.stub.Chat(chat_request(), metadata=auth())
        assert llm.adapter.calls[0].endpoint.base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("metadata", BAD_BEARERS.values(), ids=BAD_BEARERS.keys())
async def test_missing_or_malformed_token_is_refused_without_the_vault(
    llm: LLMHarness, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call in (
        llm.stub.Chat(chat_request(), metadata=metadata),
        llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai"), metadata=metadata),
        llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=metadata),
        llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in llm.stub.StreamChat(stream_request(), metadata=metadata):
            pass
    assert rich_error(caught.value).reason == "TOKEN_INVALID"
    assert llm.vault.calls == []


async def test_unknown_token_is_unauthenticated(llm: LLMHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth(user_token("nobody")))
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "nobody" not in error.message
    assert llm.adapter.calls == []


@pytest.mark.parametrize("reason", list(FinishReason), ids=lambda r: r.name)
async def test_finish_reasons_map_by_name(llm: LLMHarness, reason: FinishReason) -> None:
    llm.adapter.scripts = [[TextDelta("x"), finished(reason=reason)]]
    reply = await llm.stub.Chat(chat_request(), metadata=auth())
    assert reply.finish_reason == llm_pb2.FinishReason.Value(f"FINISH_REASON_{reason.name}")


async def test_usage_priced_by_the_requested_model_when_the_answer_names_a_snapshot(llm: LLMHarness) -> None:
    llm.adapter.scripts = [[finished(model="gpt-4o-2024-08-06", input_tokens=1_000_000, output_tokens=0)]]
    reply = await llm.stub.Chat(chat_request(model="gpt-4o"), metadata=auth())
    assert reply.model == "gpt-4o-2024-08-06"
    assert reply.content == ""
    assert reply.usage.cost_usd == pytest.approx(2.50)
    llm.adapter.scripts = [[finished(model="", input_tokens=10, output_tokens=0)]]
    reply = await llm.stub.Chat(chat_request(model="unknown-model"), metadata=auth())
    assert (reply.model, reply.usage.cost_usd, reply.usage.total_tokens) == ("unknown-model", 0.0, 10)


async def test_cost_is_rounded_to_a_tenth_of_a_nano_dollar_without_float_noise(llm: LLMHarness) -> None:
    # gpt-4o-mini: (10 * 0.15 + 7 * 0.60) / 1e6 is 5.7000000000000005e-06 in binary floats.
    assert (10 * 0.15 + 7 * 0.60) / 1e6 != 5.7e-06
    llm.adapter.scripts = [answer("Hi", model="gpt-4o-mini", input_tokens=10, output_tokens=7)] * 2
    reply = await llm.stub.Chat(chat_request(), metadata=auth())
    stream = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
    for usage in (reply.usage, stream[-1].done.usage):
        assert usage.cost_usd == 5.7e-06 and repr(usage.cost_usd) == "5.7e-06"
