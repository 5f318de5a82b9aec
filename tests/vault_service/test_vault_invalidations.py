"""The change sequence: recorded inside the changing transaction, contiguous, and pruned."""

from __future__ import annotations

import peewee as pw
import pytest

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
    changes = database.call(invalidations.since, database, 0)
    assert [c.seq for c in changes] == [1, 2, 3, 4]
    assert [c.kind for c in changes] == [
        Kind.CONFIG_CHANGED,
        Kind.CONFIG_CHANGED,
        Kind.TOKEN_REVOKED,
        Kind.USER_CHANGED,
    ]
    assert changes[0].provider == "openai" and changes[2].token_id == token_id
    assert {c.user_id for c in changes} == {user.user_id}
    assert database.call(invalidations.head, database) == 4
    assert [c.seq for c in database.call(invalidations.since, database, 2)] == [3, 4]


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
