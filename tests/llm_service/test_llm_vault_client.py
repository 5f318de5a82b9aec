"""The vault client: the credential cache, on only while the vault's watch stream is in sync.

Every test here runs a real LLM server against the fake vault, which serves
``WatchInvalidations`` (a RESYNC, then the changes a test sends with ``invalidate``).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2
from testkit.llm_fake_vault import FakeVault, StoredKey
from testkit.llm_harness import (
    ALICE,
    BOB,
    SERVICE_TOKEN,
    LLMHarness,
    auth,
    chat_request,
    llm_harness,
    rich_error,
    user_token,
)

from llm_service import credential_cache
from llm_service.deadline import Deadline
from llm_service.vault_client import VaultClient
from rmllm_common import errors
from rmllm_common.secret import Secret

CACHED = {"RMLLM_CREDENTIAL_CACHE_SECONDS": "5"}
SECOND_TOKEN = user_token("alice_second_token")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def synced(llm: LLMHarness) -> None:
    await llm.until(lambda: llm.cache.enabled)


async def chat(llm: LLMHarness, token: str = ALICE, provider: str = "openai") -> None:
    await llm.stub.Chat(chat_request(provider=provider), metadata=auth(token))


async def test_the_cache_is_on_by_default_once_the_watch_stream_is_in_sync() -> None:
    from llm_service.settings import LLMSettings

    assert LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": SERVICE_TOKEN}).credential_cache_seconds == 30
    async with llm_harness({"RMLLM_CREDENTIAL_CACHE_SECONDS": "30"}) as llm:
        await synced(llm)
        await chat(llm)
        await chat(llm)
        assert llm.vault.methods() == ["ResolveCredentials"]
        # The resolve told the vault how long the answer is kept: the lease it audits.
        assert llm.vault.calls[0].lease_seconds == 30


async def test_without_a_watch_stream_nothing_is_cached() -> None:
    async with llm_harness(CACHED) as llm:
        await llm.until(lambda: llm.vault.watchers == [] and not llm.cache.enabled)
        llm.vault.serve_watch = False  # an older vault, or one that cannot watch
        llm.vault.end_watches()
        await chat(llm)
        await chat(llm)
        assert llm.vault.methods() == ["ResolveCredentials", "ResolveCredentials"]
        assert [c.lease_seconds for c in llm.vault.calls] == [0, 0]


async def test_cache_keeps_credentials_for_seconds_per_token_and_provider() -> None:
    clock = Clock()
    async with llm_harness(CACHED, clock=clock) as llm:
        await synced(llm)
        llm.vault.users[SECOND_TOKEN] = "u-alice"
        await chat(llm)
        await chat(llm, provider="openai-api")
        assert len(llm.vault.calls) == 1
        await chat(llm, SECOND_TOKEN)
        await chat(llm, provider="anthropic")
        assert len(llm.vault.calls) == 3
        clock.now += 5.0
        await chat(llm)
        assert len(llm.vault.calls) == 4
        assert {c.user_token for c in llm.vault.calls} == {ALICE, SECOND_TOKEN}
        # A token the vault refused is never cached.
        llm.vault.users.pop(ALICE)
        clock.now += 5.0
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat(llm)
            assert rich_error(caught.value).reason == "TOKEN_INVALID"
        assert len(llm.vault.calls) == 6
        assert BOB not in {c.user_token for c in llm.vault.calls}


async def test_each_change_drops_what_it_makes_stale() -> None:
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        llm.vault.users[SECOND_TOKEN] = "u-alice"
        llm.vault.token_ids[SECOND_TOKEN] = "tok_alice_second"
        llm.vault.keys[("u-bob", "openai")] = StoredKey("sk-bob-key-0123456789")

        async def warm() -> int:
            for token, provider in ((ALICE, "openai"), (ALICE, "anthropic"), (SECOND_TOKEN, "openai")):
                await chat(llm, token, provider)
            await chat(llm, BOB)
            return len(llm.cache)

        assert await warm() == 4
        calls = len(llm.vault.calls)
        # A replaced key: only that user's entries for that provider go.
        llm.vault.keys[("u-alice", "openai")] = StoredKey("sk-alice-REPLACED-key-0000")
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_CONFIG_CHANGED, "u-alice", provider="openai")
        await llm.until(lambda: len(llm.cache) == 2)
        await chat(llm)
        assert llm.adapter.calls[-1].endpoint.api_key.reveal() == "sk-alice-REPLACED-key-0000"
        assert len(llm.vault.calls) == calls + 1
        assert await warm() == 4
        # A revoked token: its entries go, the user's other token stays.
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_TOKEN_REVOKED, "u-alice", token_id="tok_u-alice")
        await llm.until(lambda: len(llm.cache) == 2)
        assert await warm() == 4
        # A changed user (disabled, say): all of that user's entries go.
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_USER_CHANGED, "u-alice")
        await llm.until(lambda: len(llm.cache) == 1)
        assert await warm() == 4
        # A gap in the sequence: everything goes, and caching goes on.
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_BUDGET_CHANGED, "u-nobody", skip=1)
        await llm.until(lambda: len(llm.cache) == 0)
        assert llm.cache.enabled
        assert await warm() == 4


async def test_a_stream_that_ends_drops_the_cache_until_the_next_resync() -> None:
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        await chat(llm)
        assert len(llm.cache) == 1
        llm.vault.serve_watch = False
        llm.vault.end_watches()
        await llm.until(lambda: not llm.cache.enabled)
        assert len(llm.cache) == 0
        await chat(llm)
        await chat(llm)
        assert len(llm.vault.calls) == 3
        llm.vault.serve_watch = True
        await llm.until(lambda: llm.cache.enabled, timeout=40)  # UNIMPLEMENTED: retried slowly


async def test_a_resolve_in_flight_during_a_change_is_not_cached() -> None:
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        cache = llm.cache
        generation = cache.generation
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_CONFIG_CHANGED, "u-alice", provider="openai")
        await llm.until(lambda: cache.generation != generation)
        creds = credential_cache.Credentials(
            "u-alice", "openai", Secret("sk-x-0123456789"), "", "", None, None
        )
        cache.put(("digest", "openai"), creds, generation)
        assert len(cache) == 0
        cache.put(("digest", "openai"), creds, cache.generation)
        assert len(cache) == 1


async def held_resolves(llm: LLMHarness, count: int) -> None:
    """Wait until ``count`` resolves are held at the vault's gate, and a moment for any
    other call in flight to reach the vault too (so that sharing is what keeps it away)."""
    await llm.until(lambda: llm.vault.methods().count("ResolveCredentials") >= count)
    await asyncio.sleep(0.3)


async def test_concurrent_misses_share_one_resolve() -> None:
    """A burst from one caller with nothing cached (a cold start, an invalidation) costs
    the vault one resolve; every call gets the answer."""
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        gate = llm.vault.gate = asyncio.Event()
        calls = [asyncio.ensure_future(chat(llm)) for _ in range(20)]
        await held_resolves(llm, 1)
        gate.set()
        await asyncio.gather(*calls)
        assert llm.vault.methods() == ["ResolveCredentials"]
        # Another provider, or another token, is its own resolve.
        llm.vault.keys[("u-bob", "openai")] = StoredKey("sk-bob-key-0123456789")
        await asyncio.gather(chat(llm, provider="anthropic"), chat(llm, BOB))
        assert llm.vault.methods() == ["ResolveCredentials"] * 3


async def test_a_shared_resolve_that_fails_leaves_each_caller_to_ask_for_itself() -> None:
    """The first caller's own deadline passes while the vault holds its resolve: the
    callers waiting on it are not failed with it, each asks the vault itself."""
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        gate = llm.vault.gate = asyncio.Event()
        first = asyncio.ensure_future(llm.stub.Chat(chat_request(), metadata=auth(), timeout=0.5))
        await llm.until(lambda: len(llm.vault.calls) == 1)
        others = [asyncio.ensure_future(chat(llm)) for _ in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await first
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await held_resolves(llm, 4)
        gate.set()
        await asyncio.gather(*others)
        assert llm.vault.methods() == ["ResolveCredentials"] * 4


async def test_a_resolve_is_not_shared_across_a_change_or_when_it_carries_a_budget() -> None:
    async with llm_harness(CACHED) as llm:
        await synced(llm)
        gate = llm.vault.gate = asyncio.Event()
        before = [asyncio.ensure_future(chat(llm))]
        await llm.until(lambda: len(llm.vault.calls) == 1)
        # A change this process has seen: a call after it does not take the answer in flight.
        generation = llm.cache.generation
        llm.vault.invalidate(vault_pb2.INVALIDATION_KIND_CONFIG_CHANGED, "u-alice", provider="openai")
        await llm.until(lambda: llm.cache.generation != generation)
        after = [asyncio.ensure_future(chat(llm)) for _ in range(2)]
        await held_resolves(llm, 2)
        gate.set()
        await asyncio.gather(*before, *after)
        assert llm.vault.methods() == ["ResolveCredentials"] * 2  # the two later calls share theirs
        # Credentials with a budget: each call reads the vault's latest spend itself.
        llm.vault.limits["u-bob"] = {
            "budgets": [
                vault_pb2.BudgetStatus(
                    scope=vault_pb2.LIMIT_SCOPE_USER, period=vault_pb2.BUDGET_PERIOD_DAILY, limit_usd=100.0
                )
            ]
        }
        llm.vault.keys[("u-bob", "openai")] = StoredKey("sk-bob-key-0123456789")
        gate.clear()
        budgeted = [asyncio.ensure_future(chat(llm, BOB)) for _ in range(3)]
        await held_resolves(llm, 3)  # the first; the others wait for it, then ask themselves
        gate.set()
        await asyncio.gather(*budgeted)
        assert llm.vault.methods() == ["ResolveCredentials"] * 5


async def test_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = credential_cache.CredentialCache(30, max_entries=2, max_bytes=10_000)
    cache.set_synced(True)

    def creds(i: int, size: int = 10) -> credential_cache.Credentials:
        return credential_cache.Credentials(f"u-{i}", "openai", Secret("k" * size), "", "", None, None)

    for i in range(3):
        cache.put((f"d{i}", "openai"), creds(i), cache.generation)
    assert len(cache) == 2 and cache.get(("d0", "openai")) is None
    cache.put(("big", "openai"), creds(9, 9_000), cache.generation)
    assert len(cache) == 1 and cache.size_bytes <= 10_000
    assert "k" * 9_000 not in repr(cache.get(("big", "openai")))  # the key is a Secret


async def test_a_known_caller_past_the_limit_costs_no_vault_call() -> None:
    env = {"RMLLM_CHAT_RATE_PER_MINUTE": "1", "RMLLM_CHAT_BURST": "2", "RMLLM_CREDENTIAL_CACHE_SECONDS": "0"}
    async with llm_harness(env) as llm:
        await chat(llm)
        await chat(llm)
        assert len(llm.vault.calls) == 2
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat(llm)
            assert rich_error(caught.value).reason == "RATE_LIMITED"
        assert len(llm.vault.calls) == 2  # refused before the vault round trip
        # A second token of the same user shares the user's bucket from its first call on.
        llm.vault.users[SECOND_TOKEN] = "u-alice"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chat(llm, SECOND_TOKEN)
        assert rich_error(caught.value).reason == "RATE_LIMITED"
        with pytest.raises(grpc.aio.AioRpcError):
            await chat(llm, SECOND_TOKEN)
        assert len(llm.vault.calls) == 3
        # Another user is unaffected.
        llm.vault.keys[("u-bob", "openai")] = StoredKey("sk-bob-key-0123456789")
        await chat(llm, BOB)


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


async def test_a_disabled_users_token_is_user_disabled_not_unknown() -> None:
    async with llm_harness() as llm:
        llm.vault.fail_with = errors.UserDisabled("the token's user is disabled")
        for call in (
            llm.stub.Chat(chat_request(), metadata=auth()),
            llm.stub.TestKey(
                llm_pb2.TestKeyRequest(provider="openai", api_key="sk-test-0123456789abcdef"), metadata=auth()
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            rich = rich_error(caught.value)
            assert (rich.code, rich.reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_DISABLED")
            assert "rmllm-vault users enable" in (caught.value.details() or "")
        llm.vault.fail_with = errors.TokenInvalid("unknown token")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth())
        assert rich_error(caught.value).reason == "TOKEN_INVALID"


async def test_no_cache_entry_outlives_its_tokens_expiry() -> None:
    cache = credential_cache.CredentialCache(30)
    cache.set_synced(True)

    def creds(expires_at: float | None) -> credential_cache.Credentials:
        key = Secret("sk-x-0123456789")
        return credential_cache.Credentials(
            "u-1", "openai", key, "", "", None, None, token_expires_at=expires_at
        )

    cache.put(("expired", "openai"), creds(time.time() - 1), cache.generation)
    assert cache.get(("expired", "openai")) is None  # already expired: never cached
    cache.put(("soon", "openai"), creds(time.time() + 0.3), cache.generation)
    cache.put(("never", "openai"), creds(None), cache.generation)
    assert cache.get(("soon", "openai")) is not None
    deadline = time.monotonic() + 5
    while cache.get(("soon", "openai")) is not None:  # gone at the token's expiry, not the TTL's
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert cache.get(("never", "openai")) is not None
