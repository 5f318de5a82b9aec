"""Failed authentications (issue 13 item 5, vault part): counted, not written one by one; limited.

Before, every ResolveCredentials with any unknown token committed an fsync'd audit
row (5,000 junk calls, 5,000 rows). Now unknown tokens become one counter row per
interval, and failures are limited per peer (user RPCs) and per token prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Failure, Vault, md

from vault_service import accounts, authguard
from vault_service.settings import SettingsError, VaultSettings

Fails = Callable[[Awaitable[Any]], Awaitable[Failure]]
SERVICE = md(SERVICE_TOKEN)


def _rows(vault: Vault) -> list[Any]:
    model = vault.db.tables.audit
    return vault.db.call(lambda: list(model.select().order_by(model.seq)))


def _retry_seconds(error: grpc.aio.AioRpcError) -> int:
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    for detail in status_pb2.Status.FromString(details).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return int(info.retry_delay.seconds)
    raise AssertionError("no RetryInfo")


async def test_junk_tokens_give_one_counter_row_not_a_row_each(
    vault_factory: Callable[..., Awaitable[Vault]], fails: Fails
) -> None:
    vault = await vault_factory(auth_limits=authguard.Limits(audit_interval_seconds=3600))
    alice = vault.make_user("alice")
    before = len(_rows(vault))
    for _ in range(200):
        junk = accounts.new_token().reveal()
        failed = await fails(
            vault.stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=junk, provider="openai"), metadata=SERVICE
            )
        )
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    for junk in ("junk", "rmk_short"):
        await fails(
            vault.stub.AuthenticateToken(pb.AuthenticateTokenRequest(user_token=junk), metadata=SERVICE)
        )
    # A known user's refusal is still one row of its own, written at once.
    await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=alice, provider="openai"), metadata=SERVICE
        )
    )
    own = _rows(vault)[before:]
    assert [(r.actor, r.action, r.outcome) for r in own] == [
        (own[0].actor, "config.resolve", "KEY_NOT_CONFIGURED")
    ]
    await vault.handle.stop(0)  # stopping writes what is still counted
    new = _rows(vault)[before + 1 :]
    counted = {(r.action, r.outcome): r.detail for r in new}
    assert [r.actor for r in new] == ["-", "-"]
    assert set(counted) == {("config.resolve", "TOKEN_INVALID"), ("auth.token", "TOKEN_INVALID")}, new
    assert counted[("config.resolve", "TOKEN_INVALID")].startswith("count=200 peers=1 from=")
    assert counted[("auth.token", "TOKEN_INVALID")].startswith("count=2 ")
    for row in new:
        assert "rmk_" not in row.detail  # neither tokens nor their prefixes are stored


async def test_counts_are_written_every_interval(
    vault_factory: Callable[..., Awaitable[Vault]], fails: Fails
) -> None:
    vault = await vault_factory(auth_limits=authguard.Limits(audit_interval_seconds=1))
    before = len(_rows(vault))
    listing = pb.ListProviderConfigsRequest()
    await fails(vault.stub.ListProviderConfigs(listing, metadata=md(accounts.new_token().reveal())))
    deadline = time.monotonic() + 30
    counted: list[Any] = []
    while time.monotonic() < deadline:  # polled: the row is written by the vault's own timer
        counted = [r for r in _rows(vault)[before:] if r.action == "auth.user"]
        if counted:
            break
        await asyncio.sleep(0.1)
    (row,) = counted
    assert (row.actor, row.action, row.outcome) == ("-", "auth.user", "TOKEN_INVALID")
    assert row.detail.startswith("count=1 peers=1 ")


async def test_user_rpcs_are_limited_per_peer_after_repeated_failures(
    vault_factory: Callable[..., Awaitable[Vault]], fails: Fails
) -> None:
    limits = authguard.Limits(peer_per_minute=60, peer_burst=5, prefix_per_minute=0)
    vault = await vault_factory(auth_limits=limits)
    alice = vault.make_user("alice")
    listing = pb.ListProviderConfigsRequest()
    for _ in range(5):
        failed = await fails(
            vault.stub.ListProviderConfigs(listing, metadata=md(accounts.new_token().reveal()))
        )
        assert failed.reason == "TOKEN_INVALID"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.ListProviderConfigs(listing, metadata=md(accounts.new_token().reveal()))
    limited = caught.value
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _retry_seconds(limited) >= 1
    # The whole peer waits, valid token or not (it is checked before any lookup) ...
    failed = await fails(vault.stub.ListProviderConfigs(listing, metadata=md(alice)))
    assert (failed.code, failed.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # ... and the service RPCs, whose peer is the LLM service serving everyone, are not limited by peer.
    resolved = await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=alice, provider="openai"), metadata=SERVICE
        )
    )
    assert resolved.reason == "KEY_NOT_CONFIGURED"
    deadline = time.monotonic() + 30  # the bucket refills at one failure a second
    while time.monotonic() < deadline:
        try:
            await vault.stub.ListProviderConfigs(listing, metadata=md(alice))
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.2)
    else:
        raise AssertionError("the peer's failure budget never refilled")


async def test_one_token_failing_again_and_again_is_limited_by_its_prefix(
    vault_factory: Callable[..., Awaitable[Vault]], fails: Fails
) -> None:
    limits = authguard.Limits(prefix_per_minute=1, prefix_burst=3, audit_interval_seconds=3600)
    vault = await vault_factory(auth_limits=limits)
    vault.make_user("alice")
    token_id, revoked = vault.db.call(accounts.create_token, vault.db, "alice")
    vault.db.call(accounts.revoke_token, vault.db, token_id)
    other = vault.make_user("bob")
    resolve = pb.ResolveCredentialsRequest(user_token=revoked.reveal(), provider="openai")
    reasons = [
        (await fails(vault.stub.ResolveCredentials(resolve, metadata=SERVICE))).reason for _ in range(5)
    ]
    assert reasons == ["TOKEN_INVALID"] * 3 + ["RATE_LIMITED"] * 2
    # Another user's token is not held back by it.
    fine = await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=other, provider="openai"), metadata=SERVICE
        )
    )
    assert fine.reason == "KEY_NOT_CONFIGURED"
    before = len(_rows(vault))
    await vault.handle.stop(0)  # stopping writes what is still counted
    counted = {(r.action, r.outcome): r.detail for r in _rows(vault)[before:]}
    assert counted[("config.resolve", "TOKEN_INVALID")].startswith("count=3 ")
    assert counted[("config.resolve", "RATE_LIMITED")].startswith("count=2 ")


def test_buckets_refill_and_stay_bounded_in_number() -> None:
    now = [0.0]
    buckets = authguard.FailureBuckets(60, 2, clock=lambda: now[0])
    assert buckets.wait("a") is None
    buckets.spend("a")
    buckets.spend("a")
    assert buckets.wait("a") == pytest.approx(1.0)
    now[0] += 0.5
    assert buckets.wait("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.wait("a") is None
    for i in range(authguard.MAX_KEYS + 50):
        buckets.spend(f"k{i}")
    assert len(buckets._buckets) == authguard.MAX_KEYS
    off = authguard.FailureBuckets(0, 1)
    off.spend("x")
    off.spend("x")
    assert off.wait("x") is None


@pytest.mark.parametrize("peer", ["ipv4:10.0.0.5:51234", "ipv6:[::1]:5555", "unix:/tmp/s", None, ""])
def test_peer_host_drops_the_port(peer: str | None) -> None:
    expected = {
        "ipv4:10.0.0.5:51234": "ipv4:10.0.0.5",
        "ipv6:[::1]:5555": "ipv6:[::1]",
        "unix:/tmp/s": "unix:/tmp/s",
    }.get(peer or "", "unknown")
    assert authguard.peer_host(peer) == expected


def test_limit_settings(data_dir: Any) -> None:
    env = {
        "RMLLM_VAULT_AUTH_FAILURES_PER_MINUTE": "30",
        "RMLLM_VAULT_AUTH_FAILURE_BURST": "7",
        "RMLLM_VAULT_TOKEN_FAILURES_PER_MINUTE": "0",
        "RMLLM_VAULT_TOKEN_FAILURE_BURST": "2",
        "RMLLM_VAULT_AUTH_AUDIT_INTERVAL_SECONDS": "5",
    }
    limits = VaultSettings.from_env(env, data_dir=str(data_dir), with_secrets=False).auth_limits
    assert limits == authguard.Limits(30, 7, 0, 2, 5)
    assert (
        VaultSettings.from_env({}, data_dir=str(data_dir), with_secrets=False).auth_limits
        == authguard.Limits()
    )
    for name, bad in (
        ("RMLLM_VAULT_AUTH_FAILURE_BURST", "0"),
        ("RMLLM_VAULT_AUTH_AUDIT_INTERVAL_SECONDS", "x"),
    ):
        with pytest.raises(SettingsError, match=name):
            VaultSettings.from_env({name: bad}, data_dir=str(data_dir), with_secrets=False)
