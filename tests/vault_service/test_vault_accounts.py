"""Users and tokens in the database, on both backends: hashes only, revocation, disabling."""

from __future__ import annotations

import functools

import pytest

from rmllm_common.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound, UserDisabled
from vault_service import accounts, audit, limits
from vault_service.database import Database


def test_tokens_are_random_prefixed_and_stored_as_hashes(database: Database) -> None:
    principal, token_id, token = database.call(accounts.create_user, database, "alice")
    value = token.reveal()
    assert value.startswith("rmk_") and len(value) == 4 + 43 and accounts.plausible(value)
    assert token_id.startswith("tok_") and value not in repr(token)
    stored = database.call(lambda: database.tables.token.get_by_id(token_id).token_hash)
    assert stored == accounts.token_hash(value) and value not in stored
    assert database.call(accounts.authenticate, database, value) == principal
    assert len({accounts.new_token().reveal() for _ in range(1000)}) == 1000


def test_lifecycle(database: Database) -> None:
    alice, first_id, first = database.call(accounts.create_user, database, "alice")
    database.call(accounts.create_user, database, "bob")
    with pytest.raises(AlreadyExists):
        database.call(accounts.create_user, database, "alice")
    for bad in ("", "-leading-dash", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(InvalidRequest):
            database.call(accounts.create_user, database, bad)

    second_id, second = database.call(accounts.create_token, database, "alice")
    assert [(u.name, u.active_tokens, u.disabled) for u in database.call(accounts.list_users, database)] == [
        ("alice", 2, False),
        ("bob", 1, False),
    ]
    assert [t.token_id for t in database.call(accounts.list_tokens, database, "alice")] == [
        first_id,
        second_id,
    ]
    assert len(database.call(accounts.list_tokens, database)) == 3

    database.call(accounts.revoke_token, database, first_id)
    database.call(accounts.revoke_token, database, first_id)  # twice: still fine, audited
    assert database.call(accounts.authenticate, database, first.reveal()) is None
    assert database.call(accounts.authenticate, database, second.reveal()) == alice
    with pytest.raises(NotFound):
        database.call(accounts.revoke_token, database, "tok_000000000000")
    assert database.call(accounts.list_users, database)[0].active_tokens == 1

    database.call(accounts.disable_user, database, "alice")
    with pytest.raises(UserDisabled):
        database.call(accounts.authenticate, database, second.reveal())
    assert database.call(accounts.authenticate, database, first.reveal()) is None  # revoked: unknown
    with pytest.raises(FailedPrecondition):
        database.call(accounts.create_token, database, "alice")
    with pytest.raises(NotFound):
        database.call(accounts.list_tokens, database, "nobody")

    actions = [r.action for r in database.call(lambda: list(database.tables.audit.select()))]
    assert actions == [
        "user.create",
        "token.create",
        "user.create",
        "token.create",
        "token.create",
        "token.revoke",
        "token.revoke",
        "user.disable",
    ]
    assert database.call(audit.verify, database).ok


def test_enable_and_delete(database: Database) -> None:
    alice, _, token = database.call(accounts.create_user, database, "alice")
    database.call(accounts.disable_user, database, "alice")
    with pytest.raises(UserDisabled):
        database.call(accounts.authenticate, database, token.reveal())
    assert database.call(accounts.enable_user, database, "alice") == alice.user_id
    assert database.call(accounts.authenticate, database, token.reveal()) == alice

    bob, _, bob_token = database.call(accounts.create_user, database, "bob")
    database.call(accounts.create_token, database, "bob")
    tables = database.tables
    now = 1
    for provider in ("openai", "anthropic"):
        database.call(
            lambda p=provider: tables.config.insert(
                user=bob.user_id,
                provider=p,
                ciphertext=b"x",
                key_id="k",
                format_version=1,
                key_hint="abcd",
                create_time=now,
                update_time=now,
            ).execute()
        )
    # A budget and a model policy reference the user: they go with it.
    target = database.call(limits.user_target, database, "bob")
    database.call(functools.partial(limits.set_budget, daily=5.0, monthly=None), database, target)
    database.call(functools.partial(limits.set_policy, allow="openai/*", deny=None), database, target)
    deleted = database.call(accounts.delete_user, database, "bob")
    assert (deleted.user_id, deleted.configs, deleted.tokens) == (bob.user_id, 2, 2)
    assert database.call(lambda: tables.usage_limits.select().count()) == 0
    assert database.call(accounts.authenticate, database, bob_token.reveal()) is None
    assert database.call(lambda: tables.config.select().where(tables.config.user == bob.user_id).count()) == 0
    assert [u.name for u in database.call(accounts.list_users, database)] == ["alice"]
    for missing in (accounts.delete_user, accounts.enable_user):
        with pytest.raises(NotFound):
            database.call(missing, database, "bob")
    # The name is free again, and alice's configs and tokens were not touched.
    database.call(accounts.create_user, database, "bob")
    assert database.call(accounts.authenticate, database, token.reveal()) == alice

    rows = database.call(lambda: list(audit.rows(database, action="user.*")))
    assert [(r.action, r.detail) for r in rows][-4:] == [
        ("user.enable", f"{alice.user_id} alice"),
        ("user.create", f"{bob.user_id} bob"),
        ("user.delete", f"{bob.user_id} bob configs=2 tokens=2"),
        ("user.create", rows[-1].detail),
    ]
    assert database.call(audit.verify, database).ok


def test_audit_rows_filter_by_time_action_and_user_also_a_deleted_one(database: Database) -> None:
    alice, _, _ = database.call(accounts.create_user, database, "alice")
    bob, _, _ = database.call(accounts.create_user, database, "bob")
    database.call(audit.record, database, audit.Event(alice.user_id, "config.resolve", "openai", "ok", "r1"))
    database.call(accounts.delete_user, database, "bob")
    every = database.call(lambda: list(audit.rows(database)))
    assert [r.seq for r in every] == list(range(1, len(every) + 1))

    ids = database.call(audit.user_ids, database, "bob")
    assert ids == {bob.user_id}  # deleted, still found through its user.create row
    about_bob = database.call(lambda: list(audit.rows(database, users=ids)))
    assert [r.action for r in about_bob] == ["user.create", "token.create", "user.delete"]
    about_alice = database.call(
        lambda: list(audit.rows(database, users=database.call(audit.user_ids, database, "alice")))
    )
    assert [r.action for r in about_alice] == ["user.create", "token.create", "config.resolve"]
    assert about_alice[-1].actor == alice.user_id and about_alice[-1].request_id == "r1"

    resolves = database.call(lambda: list(audit.rows(database, action="config.resolve")))
    assert [r.provider for r in resolves] == ["openai"]
    after = every[-1].time + 1
    assert database.call(lambda: list(audit.rows(database, since=after))) == []
    assert database.call(lambda: list(audit.rows(database, since=every[2].time)))[0].seq <= 3
    assert database.call(audit.user_ids, database, "nobody") == set()
