"""The vault client: the short credential cache (off by default) and its bounds."""

from __future__ import annotations

import grpc
import pytest
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import ALICE, BOB, auth, chat_request, llm_harness, rich_error, user_token

from llm_service import vault_client


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_cache_is_off_by_default() -> None:
    async with llm_harness() as llm:
        await llm.stub.Chat(chat_request(), metadata=auth())
        await llm.stub.Chat(chat_request(), metadata=auth())
        assert llm.vault.methods() == ["ResolveCredentials", "ResolveCredentials"]


async def test_cache_keeps_credentials_for_seconds_per_token_and_provider() -> None:
    clock = Clock()
    async with llm_harness({"RMLLM_CREDENTIAL_CACHE_SECONDS": "5"}, clock=clock) as llm:
        llm.vault.users[user_token("alice_second_token")] = "u-alice"
        await llm.stub.Chat(chat_request(), metadata=auth())
        await llm.stub.Chat(chat_request(provider="openai-api"), metadata=auth())
        assert len(llm.vault.calls) == 1
        await llm.stub.Chat(chat_request(), metadata=auth(user_token("alice_second_token")))
        await llm.stub.Chat(chat_request(provider="anthropic"), metadata=auth())
        assert len(llm.vault.calls) == 3
        clock.now += 5.0
        await llm.stub.Chat(chat_request(), metadata=auth())
        assert len(llm.vault.calls) == 4
        assert {c.user_token for c in llm.vault.calls} == {ALICE, user_token("alice_second_token")}
        # A token the vault refused is never cached.
        llm.vault.users.pop(ALICE)
        clock.now += 5.0
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await llm.stub.Chat(chat_request(), metadata=auth())
            assert rich_error(caught.value).reason == "TOKEN_INVALID"
        assert len(llm.vault.calls) == 6
        assert BOB not in {c.user_token for c in llm.vault.calls}


async def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vault_client, "CACHE_MAX_ENTRIES", 2)
    async with llm_harness({"RMLLM_CREDENTIAL_CACHE_SECONDS": "30"}) as llm:
        for i in range(3):
            llm.vault.users[user_token(f"user_{i}")] = f"u-{i}"
            llm.vault.keys[(f"u-{i}", "openai")] = StoredKey(f"sk-user-{i}-key-000000")
        for i in (0, 1, 2, 2):
            await llm.stub.Chat(chat_request(), metadata=auth(user_token(f"user_{i}")))
        assert len(llm.vault.calls) == 3
        await llm.stub.Chat(chat_request(), metadata=auth(user_token("user_0")))  # evicted: asked again
        assert len(llm.vault.calls) == 4


async def test_vault_calls_carry_the_callers_deadline_and_request_id() -> None:
    async with llm_harness() as llm:
        await llm.stub.Chat(chat_request(), metadata=(*auth(), ("x-request-id", "req-7")), timeout=3)
        await llm.stub.Chat(chat_request(), metadata=auth())
        bounded, unbounded = llm.vault.calls
        assert bounded.remaining is not None and 0 < bounded.remaining < 3.1
        assert bounded.request_id == bounded.metadata["x-request-id"] == "req-7"
        # Without a caller deadline, the vault call is still bounded (RMLLM_VAULT_TIMEOUT_SECONDS).
        assert unbounded.remaining is not None and 3.1 < unbounded.remaining < 10.1
        assert unbounded.request_id == unbounded.metadata["x-request-id"] != "req-7"


async def test_a_stalled_vault_is_deadline_exceeded_or_unavailable_by_whose_bound_it_was() -> None:
    from testkit.llm_fake_vault import FakeVault
    from testkit.llm_harness import SERVICE_TOKEN

    from llm_service.deadline import Deadline
    from llm_service.vault_client import VaultClient
    from rmllm_common import errors
    from rmllm_common.secret import Secret

    vault = FakeVault(SERVICE_TOKEN, users={ALICE: "u-alice"}, stall=True)  # type: ignore[abstract]
    address = await vault.start()
    try:
        client = VaultClient(grpc.aio.insecure_channel(address), Secret(SERVICE_TOKEN), timeout_seconds=0.3)
        with pytest.raises(errors.VaultUnavailable):  # the vault's own bound, the caller had time left
            await client.resolve(Secret(ALICE), "openai", Deadline.after(0.6))
        with pytest.raises(errors.DeadlineExceeded):  # the caller's deadline
            await client.authenticate(Secret(ALICE), Deadline.after(0.2))
        with pytest.raises(errors.DeadlineExceeded):  # already passed: the vault is not even asked
            await client.authenticate(Secret(ALICE), Deadline.after(0.0))
        assert len(vault.calls) == 2
        await client.close()
    finally:
        await vault.stop()
