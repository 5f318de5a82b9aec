"""The change sequence: recorded inside the changing transaction, contiguous, and pruned."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import peewee as pw
import pytest
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Vault, failure, md

from rmllm_common.secret import Secret
from vault_service import accounts, configs, invalidations
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.invalidations import Kind, record_change

SEED = Secret("s" * 43)


def test_every_change_gets_the_next_sequence_number(database: Database) -> None:
    user, _token_id, _token = database.call(accounts.create_user, database, "ada")
    assert database.call(invalidations.head, database) == 0
    keyring = Keyring(SEED, ())
    blob = keyring.encrypt(Secret("sk-test-0123456789abcdef"), user.user_id, "openai")
    draft = configs.Draft(blob, keyring.current.key_id, "cdef", "", configs.Settings())
    database.call(configs.put, database, user.user_id, "openai", draft, "r1")
    database.call(configs.delete, database, user.user_id, "openai", "r2")
    token_id, _ = database.call(accounts.create_token, database, "ada")
    database.call(accounts.revoke_token, database, token_id)
    database.call(accounts.revoke_token, database, token_id)  # a no-op: no second change
    database.call(accounts.disable_user, database, "ada")
    database.call(accounts.enable_user, database, "ada")
    database.call(accounts.delete_user, database, "ada")
    changes = database.call(invalidations.since, database, 0)
    assert [c.seq for c in changes] == [1, 2, 3, 4, 5, 6]
    assert [c.kind for c in changes] == [
        Kind.CONFIG_CHANGED,
        Kind.CONFIG_CHANGED,
        Kind.TOKEN_REVOKED,
        Kind.USER_CHANGED,  # disabled
        Kind.USER_CHANGED,  # enabled
        Kind.USER_CHANGED,  # deleted: its cached credentials must go at once
    ]
    assert changes[0].provider == "openai" and changes[2].token_id == token_id
    assert {c.user_id for c in changes} == {user.user_id}
    assert database.call(invalidations.head, database) == 6
    assert [c.seq for c in database.call(invalidations.since, database, 2)] == [3, 4, 5, 6]


def test_a_rolled_back_change_leaves_no_row_and_no_gap(database: Database) -> None:
    class Boom(Exception):
        pass

    def change_then_fail() -> None:
        with database.write():
            record_change(database, Kind.BUDGET_CHANGED, "usr_x")
            raise Boom

    with pytest.raises(Boom):
        database.call(change_then_fail)

    def change() -> int:
        with database.write():
            return record_change(database, Kind.POLICY_CHANGED, "usr_x", token_id="tok_1")

    assert database.call(change) == 1
    assert [(c.seq, c.kind) for c in database.call(invalidations.since, database, 0)] == [
        (1, Kind.POLICY_CHANGED)
    ]


def test_old_rows_are_pruned(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invalidations, "PRUNE_EVERY", 5)
    monkeypatch.setattr(invalidations, "KEEP_ROWS", 3)

    def changes(n: int) -> None:
        for _ in range(n):
            with database.write():
                record_change(database, Kind.USER_CHANGED, "usr_y")

    database.call(changes, 10)
    assert [c.seq for c in database.call(invalidations.since, database, 0)] == [8, 9, 10]
    assert database.call(invalidations.head, database) == 10


def test_the_tables_exist_only_through_the_migration(database: Database) -> None:
    with pytest.raises(pw.IntegrityError):
        database.call(lambda: database.execute("INSERT INTO invalidation_head (id, seq) VALUES (1, 5)"))


async def test_watch_streams_every_change_from_every_vault_process(
    db_url: str, vault_factory: Callable[..., Awaitable[Vault]]
) -> None:
    first = await vault_factory(db_url)
    second = await vault_factory(db_url)
    token = second.make_user("ada")
    principal = second.db.call(accounts.authenticate, second.db, token)
    assert principal is not None
    user_id = principal.user_id
    stream = first.stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=md(SERVICE_TOKEN))
    resync = await stream.read()
    assert (resync.kind, resync.sequence) == (pb.INVALIDATION_KIND_RESYNC, 0)
    # A key stored through the other vault process, a token revoked by the operator CLI.
    await second.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-test-0123456789abcdef"), metadata=md(token)
    )
    token_id = second.db.call(accounts.list_tokens, second.db, "ada")[0].token_id
    second.db.call(accounts.revoke_token, second.db, token_id)
    seen = [await asyncio.wait_for(stream.read(), 5) for _ in range(2)]
    assert [(c.sequence, c.kind) for c in seen] == [
        (1, pb.INVALIDATION_KIND_CONFIG_CHANGED),
        (2, pb.INVALIDATION_KIND_TOKEN_REVOKED),
    ]
    assert (seen[0].user_id, seen[0].provider) == (user_id, "openai")
    assert (seen[1].user_id, seen[1].token_id) == (user_id, token_id)
    assert seen[1].time.seconds > 0
    # A vault stopping ends its watch streams at once, cleanly: the watcher resyncs elsewhere.
    await first.handle.stop(30)
    assert await asyncio.wait_for(stream.read(), 5) is grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK


async def test_only_the_service_may_watch(vault: Vault) -> None:
    token = vault.make_user("eve")
    stream = vault.stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=md(token))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert failure(caught.value).code == grpc.StatusCode.PERMISSION_DENIED
    stream = vault.stub.WatchInvalidations(pb.WatchInvalidationsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert failure(caught.value).code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_resolve_is_audited_as_a_lease_grant(vault: Vault) -> None:
    token = vault.make_user("bo")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-test-0123456789abcdef"), metadata=md(token)
    )
    reply = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token, provider="openai", lease_seconds=30),
        metadata=md(SERVICE_TOKEN),
    )
    assert reply.token_id.startswith("tok_")
    model = vault.db.tables.audit
    row = vault.db.call(lambda: model.select().where(model.action == "config.resolve").get())
    assert row.detail == f"lease=30s token={reply.token_id}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider="openai", lease_seconds=-1),
            metadata=md(SERVICE_TOKEN),
        )
    assert failure(caught.value).fields == ["lease_seconds"]


async def test_a_resolve_says_when_the_token_expires(vault: Vault) -> None:
    vault.make_user("cy")
    token_id, token = vault.db.call(accounts.create_token, vault.db, "cy", 3600)
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-test-0123456789abcdef"),
        metadata=md(token.reveal()),
    )
    reply = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=token.reveal(), provider="openai", lease_seconds=30),
        metadata=md(SERVICE_TOKEN),
    )
    assert reply.token_id == token_id
    assert 3500 < reply.token_expire_time.seconds - time.time() <= 3600
    forever = vault.make_user("dee")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-test-0123456789abcdef"),
        metadata=md(forever),
    )
    reply = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=forever, provider="openai"), metadata=md(SERVICE_TOKEN)
    )
    assert not reply.HasField("token_expire_time")


async def test_a_hub_that_cannot_read_ends_its_streams_and_recovers(vault: Vault) -> None:
    token = vault.make_user("fay")
    stream = vault.stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=md(SERVICE_TOKEN))
    assert (await stream.read()).kind == pb.INVALIDATION_KIND_RESYNC
    rename = "ALTER TABLE invalidations RENAME TO {}"
    vault.db.call(lambda: vault.db.db.execute_sql(rename.format("invalidations_away")))
    # The hub cannot vouch for the sequence: its streams end, new ones are refused for now.
    assert await asyncio.wait_for(stream.read(), 5) is grpc.aio.EOF
    refused = vault.stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=md(SERVICE_TOKEN))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused.read()
    assert failure(caught.value).code == grpc.StatusCode.UNAVAILABLE
    vault.db.call(lambda: vault.db.db.execute_sql("ALTER TABLE invalidations_away RENAME TO invalidations"))
    deadline = time.monotonic() + 5
    while True:  # readable again: a new watch gets a RESYNC, then the next change
        again = vault.stub.WatchInvalidations(pb.WatchInvalidationsRequest(), metadata=md(SERVICE_TOKEN))
        try:
            first = await again.read()
            break
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "the hub never recovered"
            await asyncio.sleep(0.1)
    assert first.kind == pb.INVALIDATION_KIND_RESYNC
    put = pb.PutProviderConfigRequest(provider="openai", api_key="sk-test-0123456789abcdef")
    await vault.stub.PutProviderConfig(put, metadata=md(token))
    change = await asyncio.wait_for(again.read(), 5)
    assert (change.kind, change.sequence) == (pb.INVALIDATION_KIND_CONFIG_CHANGED, first.sequence + 1)
