"""LLM-side authorization: one interceptor, a policy for every RPC, deny by default.

Every LLMService RPC is in ``auth.POLICY``; a method missing from it is refused
before its handler runs. A token that is not a user token's shape is refused
before any vault call. The vault judges the token once per call: in the
interceptor (``Access.USER``) or in the handler's own first vault call.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import ALICE, LLMHarness, auth, chat_request, rich_error, stream_request, user_token

from llm_service import auth as llm_auth
from rmllm_common.bearer import bearer_token

SERVICE = llm_pb2.DESCRIPTOR.services_by_name["LLMService"]


def calls(llm: LLMHarness, metadata: Any) -> dict[str, Any]:
    """One call of every RPC (StreamChat read to its first message), keyed by method name."""

    async def stream_first() -> Any:
        async for item in llm.stub.StreamChat(stream_request(), metadata=metadata):
            return item
        return None

    return {
        "Chat": lambda: llm.stub.Chat(chat_request(), metadata=metadata),
        "StreamChat": stream_first,
        "TestKey": lambda: llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai"), metadata=metadata),
        "ListProviders": lambda: llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=metadata),
        "ListModels": lambda: llm.stub.ListModels(
            llm_pb2.ListModelsRequest(provider="openai"), metadata=metadata
        ),
    }


def test_the_policy_covers_every_rpc_and_nothing_else() -> None:
    assert set(llm_auth.POLICY) == {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}


async def test_every_rpc_answers_an_admitted_caller(llm: LLMHarness) -> None:
    # calls() names every RPC of the service: a new one must be added here too.
    made = calls(llm, auth())
    assert set(made) == {m.name for m in SERVICE.methods}
    for method, call in made.items():
        assert await call() is not None, method


async def test_a_method_missing_from_the_policy_is_refused_before_its_handler(
    llm: LLMHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for method in ("ListProviders", "Chat", "StreamChat"):
        monkeypatch.delitem(llm_auth.POLICY, f"/{SERVICE.full_name}/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await calls(llm, auth())[method]()
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
    assert llm.vault.calls == []
    assert llm.adapter.calls == []


@pytest.mark.parametrize(
    "token",
    [
        "junk",
        "rmk_short",
        "rmk_" + "A" * 44,
        "rmk_" + "A" * 42 + "!",
        "xyz_" + "A" * 43,
        ALICE.upper(),  # RMK_...
    ],
)
async def test_a_token_not_shaped_like_a_user_token_never_reaches_the_vault(
    llm: LLMHarness, token: str
) -> None:
    for method, call in calls(llm, auth(token)).items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), method
        assert "rmk_" in error.message and token not in error.message
    assert llm.vault.calls == []


async def test_list_providers_asks_the_vault_once(llm: LLMHarness) -> None:
    await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth())
    assert [c.method for c in llm.vault.calls] == ["AuthenticateToken"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth(user_token("stranger")))
    assert rich_error(caught.value).reason == "TOKEN_INVALID"


async def test_user_access_has_the_interceptor_ask_the_vault_before_the_handler(
    llm: LLMHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(llm_auth.POLICY, f"/{SERVICE.full_name}/Chat", llm_auth.Access.USER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.Chat(chat_request(), metadata=auth(user_token("stranger")))
    assert rich_error(caught.value).reason == "TOKEN_INVALID"
    assert [c.method for c in llm.vault.calls] == ["AuthenticateToken"]  # the handler never ran
    await llm.stub.Chat(chat_request(), metadata=auth())
    assert [c.method for c in llm.vault.calls][1:] == ["AuthenticateToken", "ResolveCredentials"]


async def test_a_chat_asks_the_vault_once(llm: LLMHarness) -> None:
    await llm.stub.Chat(chat_request(), metadata=auth())
    assert [c.method for c in llm.vault.calls] == ["ResolveCredentials"]


def test_the_shared_parser_takes_one_bearer_token() -> None:
    assert bearer_token((("authorization", f"Bearer {ALICE}"),)).reveal() == ALICE
    assert bearer_token((("x-other", "1"), ("authorization", f"bearer  {ALICE} "))).reveal() == ALICE
