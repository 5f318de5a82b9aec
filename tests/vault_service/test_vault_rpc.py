"""The VaultService RPCs end to end over a real loopback server: behaviour and auth matrix."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SEED, SERVICE_TOKEN, Failure, Vault, md

from rmllm_common.secret import Secret
from vault_service import accounts, audit
from vault_service.auth import POLICY, Access

Fails = Callable[[Awaitable[Any]], Awaitable[Failure]]
KEY_A = "sk-alice-0123456789abcdefWXYZ"
KEY_B = "sk-bob-9876543210zyxwvuQRST"


SERVICE = md(SERVICE_TOKEN)


async def test_put_get_list_update_delete(vault: Vault) -> None:
    token = vault.make_user("alice")
    put = await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(
            provider="claude",
            api_key="sk-ant-api03-secretsecret-7Q2z",
            settings=pb.ProviderSettings(default_model="claude-haiku-4-5", temperature=0.3),
        ),
        metadata=md(token),
    )
    config = put.config
    assert config.provider == "anthropic"
    assert config.key_hint == "7Q2z"
    assert config.is_active
    assert config.settings.temperature == pytest.approx(0.3)
    assert not config.settings.HasField("max_tokens")
    assert config.create_time.seconds > 0 and config.update_time == config.create_time
    assert not config.HasField("last_used_time") and config.usage_count == 0

    got = await vault.stub.GetProviderConfig(
        pb.GetProviderConfigRequest(provider="anthropic"), metadata=md(token)
    )
    assert got.config == config
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="llama", base_url="http://10.1.2.3:11434/v1/"),
        metadata=md(token),
    )
    listed = await vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(token))
    assert [c.provider for c in listed.configs] == ["anthropic", "llama"]
    assert listed.configs[1].base_url == "http://10.1.2.3:11434/v1"
    assert listed.configs[1].key_hint == ""

    updated = await vault.stub.UpdateProviderConfig(
        pb.UpdateProviderConfigRequest(
            config=pb.ProviderConfig(
                provider="claude",
                is_active=False,
                settings=pb.ProviderSettings(max_tokens=256, temperature=1.9),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["is_active", "settings.max_tokens"]),
        ),
        metadata=md(token),
    )
    assert not updated.config.is_active
    assert updated.config.settings.max_tokens == 256
    assert updated.config.settings.temperature == pytest.approx(0.3)  # not in the mask: unchanged
    assert updated.config.settings.default_model == "claude-haiku-4-5"
    assert updated.config.key_hint == "7Q2z"

    cleared = await vault.stub.UpdateProviderConfig(
        pb.UpdateProviderConfigRequest(
            config=pb.ProviderConfig(provider="anthropic"),
            update_mask=field_mask_pb2.FieldMask(paths=["settings.temperature"]),
        ),
        metadata=md(token),
    )
    assert not cleared.config.settings.HasField("temperature")

    deleted = await vault.stub.DeleteProviderConfig(
        pb.DeleteProviderConfigRequest(provider="claude"), metadata=md(token)
    )
    assert deleted.provider == "anthropic"
    listed = await vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(token))
    assert [c.provider for c in listed.configs] == ["llama"]


async def test_put_replaces_the_key_and_reactivates(vault: Vault) -> None:
    token = vault.make_user("alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(token)
    )
    await vault.stub.UpdateProviderConfig(
        pb.UpdateProviderConfigRequest(
            config=pb.ProviderConfig(provider="openai", is_active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["is_active"]),
        ),
        metadata=md(token),
    )
    replaced = await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai-api", api_key=KEY_B), metadata=md(token)
    )
    assert replaced.config.is_active and replaced.config.key_hint == "QRST"
    resolved = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
    )
    assert resolved.api_key == KEY_B


async def test_authorization_matrix(vault: Vault, fails: Fails) -> None:
    alice, bob = vault.make_user("alice"), vault.make_user("bob")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(alice)
    )
    before = await vault.stub.GetProviderConfig(
        pb.GetProviderConfigRequest(provider="openai"), metadata=md(alice)
    )

    for call in (
        vault.stub.GetProviderConfig(pb.GetProviderConfigRequest(provider="openai"), metadata=md(bob)),
        vault.stub.DeleteProviderConfig(pb.DeleteProviderConfigRequest(provider="openai"), metadata=md(bob)),
        vault.stub.UpdateProviderConfig(
            pb.UpdateProviderConfigRequest(
                config=pb.ProviderConfig(provider="openai", is_active=False),
                update_mask=field_mask_pb2.FieldMask(paths=["is_active"]),
            ),
            metadata=md(bob),
        ),
    ):
        failed = await fails(call)
        assert (failed.code, failed.reason) == (grpc.StatusCode.NOT_FOUND, "CONFIG_NOT_FOUND")
    listed = await vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(bob))
    assert list(listed.configs) == []
    # Bob's token resolves Bob's keys only: he has none.
    failed = await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=bob, provider="openai"), metadata=SERVICE
        )
    )
    assert (failed.code, failed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "KEY_NOT_CONFIGURED")
    # Bob cannot resolve at all with his own token as the credential.
    failed = await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=alice, provider="openai"), metadata=md(bob)
        )
    )
    assert (failed.code, failed.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_CREDENTIAL_REQUIRED")
    # Bob storing his own openai key leaves Alice's untouched.
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_B), metadata=md(bob)
    )
    after = await vault.stub.GetProviderConfig(
        pb.GetProviderConfigRequest(provider="openai"), metadata=md(alice)
    )
    assert after == before
    resolved = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=alice, provider="openai"), metadata=SERVICE
    )
    assert resolved.api_key == KEY_A


USER_CALLS: list[tuple[str, Any]] = [
    ("PutProviderConfig", pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A)),
    ("UpdateProviderConfig", pb.UpdateProviderConfigRequest(config=pb.ProviderConfig(provider="openai"))),
    ("GetProviderConfig", pb.GetProviderConfigRequest(provider="openai")),
    ("ListProviderConfigs", pb.ListProviderConfigsRequest()),
    ("DeleteProviderConfig", pb.DeleteProviderConfigRequest(provider="openai")),
]


async def test_user_rpcs_refuse_missing_unknown_revoked_and_disabled_tokens(
    vault: Vault, fails: Fails
) -> None:
    alice = vault.make_user("alice")
    token_id, revoked = vault.db.call(accounts.create_token, vault.db, "alice")
    vault.db.call(accounts.revoke_token, vault.db, token_id)
    carol = vault.make_user("carol")
    vault.db.call(accounts.disable_user, vault.db, "carol")
    refused = [
        (),
        md("rmk_" + "x" * 43),
        md(revoked.reveal()),
        md(SERVICE_TOKEN),
        (("authorization", alice),),  # no Bearer scheme
        (("authorization", "Bearer "),),
    ]
    for method, request in USER_CALLS:
        for metadata in refused:
            failed = await fails(getattr(vault.stub, method)(request, metadata=metadata))
            assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), method
        # A disabled user's real token: its own reason, and a message saying who can help.
        failed = await fails(getattr(vault.stub, method)(request, metadata=md(carol)))
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_DISABLED"), method
        assert "users enable" in failed.message
    ok = await vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(alice))
    assert list(ok.configs) == []


async def test_service_rpcs_need_the_service_credential(vault: Vault, fails: Fails) -> None:
    alice = vault.make_user("alice")
    calls = [
        ("ResolveCredentials", pb.ResolveCredentialsRequest(user_token=alice, provider="openai")),
        ("AuthenticateToken", pb.AuthenticateTokenRequest(user_token=alice)),
    ]
    for method, request in calls:
        failed = await fails(getattr(vault.stub, method)(request))
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        for wrong in (alice, SERVICE_TOKEN + "x", SERVICE_TOKEN[:-1]):
            failed = await fails(getattr(vault.stub, method)(request, metadata=md(wrong)))
            assert (failed.code, failed.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "SERVICE_CREDENTIAL_REQUIRED",
            )
    who = await vault.stub.AuthenticateToken(pb.AuthenticateTokenRequest(user_token=alice), metadata=SERVICE)
    assert who.user_name == "alice" and who.user_id.startswith("usr_")


async def test_service_rpcs_refuse_revoked_user_tokens(vault: Vault, fails: Fails) -> None:
    vault.make_user("alice")
    token_id, token = vault.db.call(accounts.create_token, vault.db, "alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(token.reveal())
    )
    vault.db.call(accounts.revoke_token, vault.db, token_id)
    for call in (
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token.reveal(), provider="openai"), metadata=SERVICE
        ),
        vault.stub.AuthenticateToken(
            pb.AuthenticateTokenRequest(user_token=token.reveal()), metadata=SERVICE
        ),
        vault.stub.ResolveCredentials(pb.ResolveCredentialsRequest(provider="openai"), metadata=SERVICE),
    ):
        failed = await fails(call)
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_resolve_counts_usage_and_audits_with_the_request_id(vault: Vault, fails: Fails) -> None:
    token = vault.make_user("alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(
            provider="xai", api_key="xai-0123456789abcdef", base_url="https://api.x.ai/v1/"
        ),
        metadata=md(token),
    )
    first = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="grok", request_id="chat-42"),
        metadata=SERVICE,
    )
    assert (first.provider, first.api_key, first.key_hint) == ("grok", "xai-0123456789abcdef", "cdef")
    assert first.base_url == "https://api.x.ai/v1"
    await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="grok"),
        metadata=(*SERVICE, ("x-request-id", "from-header-7")),
    )
    config = (
        await vault.stub.GetProviderConfig(pb.GetProviderConfigRequest(provider="grok"), metadata=md(token))
    ).config
    assert config.usage_count == 2 and config.last_used_time.seconds > 0

    await vault.stub.UpdateProviderConfig(
        pb.UpdateProviderConfigRequest(
            config=pb.ProviderConfig(provider="grok", is_active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["is_active"]),
        ),
        metadata=md(token),
    )
    failed = await fails(
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider="grok"), metadata=SERVICE
        )
    )
    assert (failed.code, failed.reason, failed.metadata["provider"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "KEY_NOT_CONFIGURED",
        "grok",
    )
    rows = vault.db.call(lambda: list(vault.db.tables.audit.select().order_by(vault.db.tables.audit.seq)))
    resolves = [(r.request_id, r.outcome) for r in rows if r.action == "config.resolve"]
    assert resolves == [("chat-42", "ok"), ("from-header-7", "ok"), (resolves[2][0], "KEY_NOT_CONFIGURED")]
    assert vault.db.call(audit.verify, vault.db).ok


async def test_a_changed_seed_fails_loudly_and_an_old_seed_still_decrypts(
    vault_factory: Callable[..., Awaitable[Vault]], fails: Fails, caplog: pytest.LogCaptureFixture
) -> None:
    first = await vault_factory()
    token = first.make_user("alice")
    await first.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(token)
    )
    await first.handle.stop(0)

    new_seed = "Tz6CHVO3-1UjMkPNT6v0fF8gz8epL8t_Yybo9pjMN8g"  # random, as generated
    changed = await vault_factory(seed=Secret(new_seed))
    with caplog.at_level(logging.ERROR):
        failed = await fails(
            changed.stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
            )
        )
    assert (failed.code, failed.reason) == (grpc.StatusCode.INTERNAL, "KEY_DECRYPTION_FAILED")
    key_id = failed.metadata["key_id"]
    assert key_id in failed.message
    logged = [r for r in caplog.records if getattr(r, "key_id", None) == key_id]
    assert logged and logged[0].levelno == logging.ERROR
    await changed.handle.stop(0)

    rotated = await vault_factory(seed=Secret(new_seed), old_seeds=(Secret(SEED),))
    resolved = await rotated.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
    )
    assert resolved.api_key == KEY_A


async def test_health_and_reflection_need_no_token(vault: Vault) -> None:
    health: Any = health_pb2_grpc.HealthStub(vault.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="realmultillm.vault.v1.VaultService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_failing_audit_write_fails_the_call(vault: Vault, fails: Fails) -> None:
    token = vault.make_user("alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(token)
    )
    vault.db.call(lambda: vault.db.db.execute_sql("ALTER TABLE audit_events RENAME TO audit_events_moved"))
    for call in (
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=SERVICE
        ),
        vault.stub.PutProviderConfig(
            pb.PutProviderConfigRequest(provider="openai", api_key=KEY_B), metadata=md(token)
        ),
        vault.stub.DeleteProviderConfig(
            pb.DeleteProviderConfigRequest(provider="openai"), metadata=md(token)
        ),
    ):
        failed = await fails(call)
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    config = (
        await vault.stub.GetProviderConfig(pb.GetProviderConfigRequest(provider="openai"), metadata=md(token))
    ).config
    assert (config.key_hint, config.usage_count) == (KEY_A[-4:], 0)  # nothing changed, nothing decrypted


def test_every_vault_rpc_has_an_access_rule() -> None:
    service = pb.DESCRIPTOR.services_by_name["VaultService"]
    assert set(POLICY) == {f"/{service.full_name}/{method.name}" for method in service.methods}
    service_only = {name.rsplit("/", 1)[1] for name, access in POLICY.items() if access is Access.SERVICE}
    assert service_only == {"ResolveCredentials", "AuthenticateToken", "ReportUsage", "WatchInvalidations"}


async def test_service_rpcs_tell_a_disabled_user_apart_and_audit_it(vault: Vault, fails: Fails) -> None:
    carol = vault.make_user("carol")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY_A), metadata=md(carol)
    )
    vault.db.call(accounts.disable_user, vault.db, "carol")
    for call in (
        vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=carol, provider="openai", request_id="req-1"),
            metadata=SERVICE,
        ),
        vault.stub.AuthenticateToken(pb.AuthenticateTokenRequest(user_token=carol), metadata=SERVICE),
    ):
        failed = await fails(call)
        assert (failed.code, failed.reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_DISABLED")
    refused = vault.db.call(lambda: list(audit.rows(vault.db, action="config.resolve")))
    assert [(r.outcome, r.request_id) for r in refused] == [("USER_DISABLED", "req-1")]
    vault.db.call(accounts.enable_user, vault.db, "carol")
    resolved = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=carol, provider="openai"), metadata=SERVICE
    )
    assert resolved.api_key == KEY_A
