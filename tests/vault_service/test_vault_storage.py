"""The storage layer on both SQLite and PostgreSQL: migrations, ciphertext only, tampering,
audit chain, rewrap and concurrent writers."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from testkit.vault import OLD_SEED, SEED

from rmllm_common.errors import KeyDecryptionFailed, NotFound, TokenInvalid
from rmllm_common.secret import Secret
from vault_service import accounts, audit, configs, limits, migrations, rewrap
from vault_service.crypto import Keyring
from vault_service.database import Database

KEYRING = Keyring(Secret(SEED))
KEY = "sk-plaintext-canary-Zq81Xw27"


def store(db: Database, keyring: Keyring, user_id: str, provider: str, key: str) -> configs.Record:
    secret = Secret(key)
    draft = configs.Draft(
        keyring.encrypt(secret, user_id, provider),
        keyring.current.key_id,
        secret.hint,
        "",
        configs.Settings(),
    )
    return db.call(configs.put, db, user_id, provider, draft, "req-1")


def user(db: Database, name: str) -> tuple[str, str]:
    principal, _, token = db.call(accounts.create_user, db, name)
    return principal.user_id, token.reveal()


def resolve(db: Database, token: str, provider: str, keyring: Keyring = KEYRING) -> configs.Resolved:
    return db.call(configs.resolve, db, keyring, token, provider, "req-2")


def everything_stored(db: Database) -> str:
    """Every value of every table, as text."""
    dump = []
    for table in ("users", "tokens", "provider_configs", "audit_events", "audit_head", "schema_migrations"):
        rows = db.call(lambda t=table: db.db.execute_sql(f"SELECT * FROM {t}").fetchall())  # noqa: S608 - fixed names
        dump += [repr(row) for row in rows]
        dump += [
            bytes(v).decode("latin-1") for row in rows for v in row if isinstance(v, (bytes, memoryview))
        ]
    return "\n".join(dump)


def test_migrations_are_versioned_and_keep_data(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert migrations.current_version(db) == 0
        assert migrations.migrate(db, target=1) == [1]
        db.call(
            lambda: db.tables.user.insert(id="usr_1", name="early", disabled=False, create_time=1).execute()
        )
        assert migrations.migrate(db) == list(range(2, migrations.LATEST + 1))
        assert migrations.migrate(db) == []
        assert migrations.current_version(db) == migrations.LATEST
        assert db.call(lambda: db.tables.user.get_by_id("usr_1").name) == "early"
        db.call(lambda: db.tables.migration.insert(version=99, name="future", applied_time=0).execute())
        with pytest.raises(migrations.SchemaTooNew, match="newer than this vault"):
            migrations.migrate(db)
    finally:
        db.close()


def test_the_database_holds_only_ciphertext(database: Database, db_url: str) -> None:
    alice, token = user(database, "alice")
    record = store(database, KEYRING, alice, "openai", KEY)
    assert record.key_hint == "Xw27"
    assert resolve(database, token, "openai").api_key.reveal() == KEY
    dumped = everything_stored(database)
    assert KEY not in dumped and KEY[3:-4] not in dumped
    assert token not in dumped and token[4:] not in dumped
    assert SEED not in dumped
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert KEY.encode() not in raw and token.encode() not in raw and SEED.encode() not in raw


def test_tampered_or_swapped_ciphertext_fails(database: Database) -> None:
    alice, alice_token = user(database, "alice")
    bob, bob_token = user(database, "bob")
    store(database, KEYRING, alice, "openai", KEY)
    store(database, KEYRING, alice, "openrouter", "sk-or-other-key-0000")
    store(database, KEYRING, bob, "openai", "sk-bob-key-1111")
    model = database.tables.config

    def blob(user_id: str, provider: str) -> bytes:
        row = model.get((model.user == user_id) & (model.provider == provider))
        return bytes(row.ciphertext)

    def set_blob(user_id: str, provider: str, value: bytes) -> None:
        model.update(ciphertext=value).where((model.user == user_id) & (model.provider == provider)).execute()

    alice_blob = database.call(blob, alice, "openai")
    # Alice's ciphertext copied into Bob's row, and into Alice's other provider: both fail.
    database.call(set_blob, bob, "openai", alice_blob)
    database.call(set_blob, alice, "openrouter", alice_blob)
    for token, provider in ((bob_token, "openai"), (alice_token, "openrouter")):
        with pytest.raises(KeyDecryptionFailed) as caught:
            resolve(database, token, provider)
        assert caught.value.metadata["key_id"] == KEYRING.current.key_id
    # One flipped bit anywhere (header, nonce, body, tag) fails too.
    for position in (0, 3, 12, len(alice_blob) // 2, len(alice_blob) - 1):
        changed = bytearray(alice_blob)
        changed[position] ^= 0x01
        database.call(set_blob, alice, "openai", bytes(changed))
        with pytest.raises(KeyDecryptionFailed):
            resolve(database, alice_token, "openai")
    database.call(set_blob, alice, "openai", alice_blob)
    assert resolve(database, alice_token, "openai").api_key.reveal() == KEY
    outcomes = [r.outcome for r in database.call(lambda: list(database.tables.audit.select()))]
    assert outcomes.count("KEY_DECRYPTION_FAILED") == 7
    assert database.call(audit.verify, database).ok


def test_the_resolve_query_tells_whether_any_budget_or_policy_applies(database: Database) -> None:
    db = database
    alice_id, alice = user(db, "alice")
    store(db, KEYRING, alice_id, "openai", KEY)
    other_token_id, _ = db.call(accounts.create_token, db, "alice")

    def limited() -> bool:
        return db.call(configs.lookup, db, KEYRING, alice, "openai", "r").limited

    assert not limited()  # no limits at all: ResolveCredentials skips limits.lookup
    policy = functools.partial(limits.set_policy, allow="openai/*", deny=None)
    db.call(policy, db, db.call(limits.token_target, db, other_token_id))
    assert not limited()  # another token's policy does not apply to this one
    (mine,) = [t.token_id for t in db.call(accounts.list_tokens, db, "alice") if t.token_id != other_token_id]
    db.call(policy, db, db.call(limits.token_target, db, mine))
    assert limited()
    bob_id, bob = user(db, "bob")
    store(db, KEYRING, bob_id, "openai", KEY)
    db.call(
        functools.partial(limits.set_budget, daily=1.0, monthly=None),
        db,
        db.call(limits.user_target, db, "bob"),
    )
    assert db.call(configs.lookup, db, KEYRING, bob, "openai", "r").limited


def test_resolve_failures_are_typed(database: Database) -> None:
    user(database, "alice")
    with pytest.raises(TokenInvalid):
        resolve(database, "rmk_" + "A" * 43, "openai")
    with pytest.raises(TokenInvalid):
        resolve(database, "not-a-token", "openai")
    with pytest.raises(NotFound):
        database.call(configs.get, database, "usr_nobody", "openai")
    with pytest.raises(NotFound):
        database.call(configs.delete, database, "usr_nobody", "openai", "r")
    assert database.call(audit.verify, database).ok


@pytest.mark.parametrize("damage", ["modify", "delete-middle", "delete-last", "insert"])
def test_audit_verify_detects_tampering(database: Database, damage: str) -> None:
    alice, token = user(database, "alice")
    for provider in ("openai", "openrouter", "llama"):
        store(database, KEYRING, alice, provider, "sk-or-abc" if provider == "openrouter" else "sk-abc")
    resolve(database, token, "openai")
    assert database.call(audit.verify, database).ok
    events = database.tables.audit
    raw = database.db

    def tamper() -> None:
        last = events.select(pw.fn.MAX(events.seq)).scalar()
        if damage == "modify":
            events.update(outcome="ok", actor="usr_someone_else").where(events.seq == 3).execute()
        elif damage == "delete-middle":
            events.delete().where(events.seq == 3).execute()
        elif damage == "delete-last":
            events.delete().where(events.seq == last).execute()
        else:
            raw.execute_sql(
                "INSERT INTO audit_events SELECT seq + 1000, time, actor, action, provider, outcome, "
                "request_id, detail, prev_hash, hash FROM audit_events WHERE seq = 2"
            )

    database.call(tamper)
    report = database.call(audit.verify, database)
    assert not report.ok
    expected = {"modify": "modified", "delete-middle": "missing", "delete-last": "head", "insert": "missing"}
    assert any(expected[damage] in p for p in report.problems), report.problems


def test_no_unaudited_operations(database: Database) -> None:
    alice, token = user(database, "alice")
    store(database, KEYRING, alice, "openai", KEY)
    database.call(lambda: database.db.execute_sql("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    with pytest.raises(pw.DatabaseError):
        resolve(database, token, "openai")
    with pytest.raises(pw.DatabaseError):
        store(database, KEYRING, alice, "openrouter", "sk-or-new")
    with pytest.raises(pw.DatabaseError):
        database.call(configs.delete, database, alice, "openai", "r")
    record = database.call(configs.get, database, alice, "openai")
    assert record.usage_count == 0 and record.last_used_time is None
    assert [r.provider for r in database.call(configs.list_for, database, alice)] == ["openai"]


def test_rewrap_moves_every_row_to_the_current_seed_and_resumes(database: Database) -> None:
    old = Keyring(Secret(OLD_SEED))
    both = Keyring(Secret(SEED), (Secret(OLD_SEED),))
    tokens = {}
    for name in ("alice", "bob", "carol"):
        user_id, tokens[name] = user(database, name)
        store(database, old, user_id, "openai", f"sk-{name}-key-0000")
    assert resolve(database, tokens["alice"], "openai", both).api_key.reveal() == "sk-alice-key-0000"
    with pytest.raises(KeyDecryptionFailed):
        resolve(database, tokens["alice"], "openai", KEYRING)

    first_id = database.call(
        lambda: database.tables.config.select(pw.fn.MIN(database.tables.config.id)).scalar()
    )
    database.call(rewrap._one, database, both, first_id, rewrap.Counts())  # an interrupted run
    counts = database.call(rewrap.rewrap, database, both)
    assert (counts.rewrapped, counts.current, counts.failed) == (2, 1, 0)
    again = database.call(rewrap.rewrap, database, both)
    assert (again.rewrapped, again.current, again.failed) == (0, 3, 0)
    for name, token in tokens.items():
        assert resolve(database, token, "openai", KEYRING).api_key.reveal() == f"sk-{name}-key-0000"
    rewraps = [
        r for r in database.call(lambda: list(database.tables.audit.select())) if r.action == "config.rewrap"
    ]
    assert len(rewraps) == 3 and all(r.outcome == "ok" for r in rewraps)

    unknown = Keyring(Secret("TZRk7lgrwSIt_zv1jiqasmHyvihNQ6hZmOZEp2hg3Mc"))  # random, as generated
    dave, _ = user(database, "dave")
    store(database, unknown, dave, "openai", "sk-dave-key-0000")
    failed = database.call(rewrap.rewrap, database, KEYRING)
    assert (failed.rewrapped, failed.current, failed.failed) == (0, 3, 1)
    assert database.call(audit.verify, database).ok


async def test_concurrent_writers_on_one_row_leave_one_row(database: Database) -> None:
    alice, token = user(database, "alice")
    keys = [f"sk-concurrent-{i:02d}-key" for i in range(50)]

    def put(key: str) -> configs.Record:
        return store(database, KEYRING, alice, "openai", key)

    await asyncio.gather(*(asyncio.to_thread(put, key) for key in keys))
    model = database.tables.config
    assert database.call(lambda: model.select().where(model.user == alice).count()) == 1
    assert resolve(database, token, "openai").api_key.reveal() in keys
    report = database.call(audit.verify, database)
    assert report.ok and report.rows >= 50


async def test_concurrent_writers_on_different_rows_lose_nothing(database: Database) -> None:
    ids = [user(database, f"user{i}") for i in range(5)]
    providers = {
        "openai": "sk-",
        "anthropic": "sk-ant-",
        "google": "AIza",
        "openrouter": "sk-or-",
        "grok": "xai-",
    }
    jobs: list[Any] = []
    for user_id, _ in ids:
        for provider, prefix in providers.items():
            jobs.append(
                asyncio.to_thread(
                    store, database, KEYRING, user_id, provider, f"{prefix}{user_id}-{provider}"
                )
            )
    await asyncio.gather(*jobs)
    for user_id, token in ids:
        assert [r.provider for r in database.call(configs.list_for, database, user_id)] == sorted(providers)
        for provider, prefix in providers.items():
            assert resolve(database, token, provider).api_key.reveal() == f"{prefix}{user_id}-{provider}"
    assert database.call(audit.verify, database).ok
