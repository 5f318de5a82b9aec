"""Users and tokens in the database, on both backends: hashes only, revocation, disabling."""

from __future__ import annotations

import pytest

from rmllm_common.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from vault_service import accounts, audit
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
    assert database.call(accounts.authenticate, database, second.reveal()) is None
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
