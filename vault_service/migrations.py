"""Versioned schema migrations, applied in order at start so an upgraded vault keeps its data.

Each migration is a number, a name and DDL for SQLite and PostgreSQL. ``migrate``
records applied versions in ``schema_migrations`` and runs the missing ones in one
transaction, holding a lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL) so two vaults starting together migrate once. A database written by a
newer vault (a version this code does not know) is refused rather than guessed at.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vault_service.database import Database

_ADVISORY_LOCK_ID = 0x524D4C4C4D  # "RMLLM"


@dataclass(frozen=True)
class Migration:
    """One schema step; ``{blob}`` and ``{serial}`` in the DDL take each dialect's types."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, tokens and provider configs",
        (
            """CREATE TABLE users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                disabled BOOLEAN NOT NULL DEFAULT FALSE,
                create_time BIGINT NOT NULL)""",
            """CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users (id),
                token_hash TEXT NOT NULL UNIQUE,
                create_time BIGINT NOT NULL,
                revoke_time BIGINT)""",
            "CREATE INDEX tokens_user_id ON tokens (user_id)",
            """CREATE TABLE provider_configs (
                id {serial},
                user_id TEXT NOT NULL REFERENCES users (id),
                provider TEXT NOT NULL,
                ciphertext {blob} NOT NULL,
                key_id TEXT NOT NULL,
                format_version INTEGER NOT NULL,
                key_hint TEXT NOT NULL,
                base_url TEXT NOT NULL DEFAULT '',
                settings TEXT NOT NULL DEFAULT '{{}}',
                is_active BOOLEAN NOT NULL DEFAULT TRUE,
                create_time BIGINT NOT NULL,
                update_time BIGINT NOT NULL,
                last_used_time BIGINT,
                usage_count BIGINT NOT NULL DEFAULT 0,
                UNIQUE (user_id, provider))""",
            "CREATE INDEX provider_configs_key_id ON provider_configs (key_id)",
        ),
    ),
    Migration(
        2,
        "hash-chained audit log",
        (
            """CREATE TABLE audit_events (
                seq BIGINT PRIMARY KEY,
                time BIGINT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                provider TEXT NOT NULL,
                outcome TEXT NOT NULL,
                request_id TEXT NOT NULL,
                detail TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL)""",
            """CREATE TABLE audit_head (
                id INTEGER PRIMARY KEY,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL)""",
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')",
        ),
    ),
    Migration(
        3,
        "usage ledger, daily rollups, budgets and model policies",
        (
            # One row per LLM-service call; request_id is the idempotency key of ingestion.
            """CREATE TABLE usage_records (
                request_id TEXT PRIMARY KEY,
                time BIGINT NOT NULL,
                user_id TEXT NOT NULL,
                token_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                method TEXT NOT NULL,
                stream BOOLEAN NOT NULL,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cache_read_input_tokens BIGINT NOT NULL,
                cache_creation_input_tokens BIGINT NOT NULL,
                reasoning_tokens BIGINT NOT NULL,
                usage_reported BOOLEAN NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL,
                latency_us BIGINT NOT NULL,
                ttft_us BIGINT,
                status_code TEXT NOT NULL,
                reason TEXT NOT NULL,
                retries INTEGER NOT NULL,
                ingest_time BIGINT NOT NULL)""",
            # Newest-first paging of one user's records, and retention by time.
            "CREATE INDEX usage_records_user_time ON usage_records (user_id, time, request_id)",
            "CREATE INDEX usage_records_time ON usage_records (time)",
            # Per user, token, UTC day, provider and model: summaries and budget spend read these.
            """CREATE TABLE usage_daily (
                user_id TEXT NOT NULL,
                token_id TEXT NOT NULL,
                day TEXT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                calls BIGINT NOT NULL,
                failed_calls BIGINT NOT NULL,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cache_read_input_tokens BIGINT NOT NULL,
                cache_creation_input_tokens BIGINT NOT NULL,
                reasoning_tokens BIGINT NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (user_id, day, provider, model, token_id))""",
            "CREATE INDEX usage_daily_day ON usage_daily (day)",
            # Budgets and model policy of a user (token_id '') or of one of its tokens.
            """CREATE TABLE usage_limits (
                user_id TEXT NOT NULL REFERENCES users (id),
                token_id TEXT NOT NULL,
                daily_usd DOUBLE PRECISION,
                monthly_usd DOUBLE PRECISION,
                allow_models TEXT NOT NULL DEFAULT '',
                deny_models TEXT NOT NULL DEFAULT '',
                update_time BIGINT NOT NULL,
                PRIMARY KEY (user_id, token_id))""",
        ),
    ),
    Migration(
        4,
        "optional token expiry",
        ("ALTER TABLE tokens ADD COLUMN expire_time BIGINT",),
    ),
    Migration(
        5,
        "change sequence for cache invalidation",
        (
            """CREATE TABLE invalidations (
                seq BIGINT PRIMARY KEY,
                time BIGINT NOT NULL,
                kind TEXT NOT NULL,
                user_id TEXT NOT NULL,
                provider TEXT NOT NULL DEFAULT '',
                token_id TEXT NOT NULL DEFAULT '')""",
            """CREATE TABLE invalidation_head (
                id INTEGER PRIMARY KEY,
                seq BIGINT NOT NULL)""",
            "INSERT INTO invalidation_head (id, seq) VALUES (1, 0)",
        ),
    ),
)
LATEST = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer vault."""


def _dialect(db: Database) -> dict[str, str]:
    if db.is_postgres:
        return {"blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"}
    return {"blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}


def _apply(db: Database, target: int) -> list[int]:
    raw = db.db
    applied: list[int] = []
    with db.write():
        if db.is_postgres:
            raw.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_ID,))
        raw.execute_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_time BIGINT NOT NULL)"
        )
        done = {row[0] for row in raw.execute_sql("SELECT version FROM schema_migrations").fetchall()}
        newest = max(done, default=0)
        if newest > LATEST:
            raise SchemaTooNew(
                f"the database has schema version {newest}, newer than this vault knows ({LATEST}); "
                "run the newer vault, or restore a backup made before the upgrade"
            )
        types = _dialect(db)
        for migration in MIGRATIONS:
            if migration.version in done or migration.version > target:
                continue
            for statement in migration.statements:
                raw.execute_sql(statement.format(**types))
            db.tables.migration.insert(
                version=migration.version, name=migration.name, applied_time=time.time_ns() // 1000
            ).execute()
            applied.append(migration.version)
    return applied


def migrate(db: Database, target: int = LATEST) -> list[int]:
    """Bring the schema up to ``target``; return the versions applied now."""
    return db.call(_apply, db, target)


def current_version(db: Database) -> int:
    """The newest applied version (0 for an empty database)."""

    def read() -> int:
        exists_sql = (
            "SELECT to_regclass('schema_migrations') IS NOT NULL"
            if db.is_postgres
            else "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if not db.db.execute_sql(exists_sql).fetchone()[0]:
            return 0
        row = db.db.execute_sql("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    return db.call(read)
