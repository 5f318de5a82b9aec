"""The vault's database: connection from a URL, table models, and off-loop execution.

``RMLLM_DATABASE_URL`` is ``sqlite:///PATH`` (``sqlite:////abs/path`` for an
absolute one; WAL journal, synchronous commits, a busy timeout,
``BEGIN IMMEDIATE`` write transactions, foreign keys on) or
``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=VALUE...]``, the query
parameters going to psycopg2 (``sslmode``, ``options=-csearch_path=SCHEMA``...).
Connections come from a small pool. The peewee models are built per database
(``Tables``), so two stores in one process never share state. ``Database.run``
executes blocking work on a small thread pool, each call inside its own pooled
connection, so the event loop never waits on the database; a database that
cannot be reached (or is locked past the busy timeout) becomes ``UNAVAILABLE`` /
``DATABASE_UNAVAILABLE`` there, once. ``Database.read`` is for the hot reads (a
resolve, an authentication: a few indexed rows through ``execute``): on SQLite it
runs them at once on the calling thread (the event loop) on a read-only
connection of that thread's own (opened once, on a thread) that never waits for
a lock (WAL readers do not
wait for the writer; should one ever be told "busy", the read goes to the
threads instead), which saves the hop to a thread and back; on PostgreSQL (a
network round trip) it is ``run``. The schema itself is made by
``vault_service.migrations``, not by the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from rmllm_common.errors import DatabaseUnavailable
from vault_service import metrics

T = TypeVar("T")
log = logging.getLogger(__name__)
WORKERS = 4
SQLITE_BUSY_TIMEOUT_MS = 10_000
POOL_WAIT_SECONDS = 10


_SECONDARY = "no transaction is active"


def original_error(exc: BaseException) -> BaseException:
    """The error that ended a transaction, not the failed rollback that followed it."""
    current: BaseException | None = exc
    while current is not None and _SECONDARY in str(current):
        current = current.__context__
    return current if isinstance(current, pw.DatabaseError) else exc


def _sqlite_code(exc: BaseException) -> int | None:
    """The SQLite result code behind a (peewee-wrapped) error, if it has one."""
    for cause in (exc, *exc.args, exc.__context__):
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code
    return None


class DatabaseUrlError(ValueError):
    """An ``RMLLM_DATABASE_URL`` that cannot be used, with the accepted forms."""


def open_database(url: str) -> Any:
    """A pooled peewee database for a ``sqlite:///`` or ``postgresql://`` URL."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # As SQLAlchemy and peewee's db_url: sqlite:///relative.db, sqlite:////absolute.db
        path = unquote(parts.path)[1:]
        if not path:
            raise DatabaseUrlError(
                "RMLLM_DATABASE_URL: sqlite URLs look like sqlite:////absolute/path/vault.sqlite3 "
                "or sqlite:///relative/path/vault.sqlite3"
            )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Only ciphertext is inside, but the file is still nobody else's business.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        return PooledSqliteDatabase(
            path,
            max_connections=WORKERS + 4,
            timeout=POOL_WAIT_SECONDS,
            lock_type="IMMEDIATE",
            check_same_thread=False,
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
                "foreign_keys": 1,
                # FULL: a commit (a key handed out, and its audit row) survives power loss.
                "synchronous": "full",
            },
        )
    if parts.scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise DatabaseUrlError(
                "RMLLM_DATABASE_URL: name the database: postgresql://user@host:5432/dbname"
            )
        params: dict[str, Any] = dict(parse_qsl(parts.query))
        if parts.username:
            params["user"] = unquote(parts.username)
        if parts.password:
            params["password"] = unquote(parts.password)
        params["host"] = parts.hostname or "127.0.0.1"
        params["port"] = parts.port or 5432
        return PooledPostgresqlDatabase(
            name, max_connections=WORKERS + 4, timeout=POOL_WAIT_SECONDS, **params
        )
    raise DatabaseUrlError(
        "RMLLM_DATABASE_URL must start with sqlite:/// or postgresql:// "
        f"(got a URL with scheme {parts.scheme!r})"
    )


@dataclass(frozen=True)
class Tables:
    """The peewee models of one database."""

    user: Any
    token: Any
    config: Any
    audit: Any
    audit_head: Any
    migration: Any
    usage_record: Any
    usage_daily: Any
    usage_limits: Any


def define_tables(db: Any) -> Tables:
    """Models bound to ``db``; their columns mirror the migrations' DDL."""

    class Base(pw.Model):
        class Meta:
            database = db

    class User(Base):
        id = pw.TextField(primary_key=True)
        name = pw.TextField(unique=True)
        disabled = pw.BooleanField(default=False)
        create_time = pw.BigIntegerField()

        class Meta:
            table_name = "users"

    class Token(Base):
        id = pw.TextField(primary_key=True)
        user = pw.ForeignKeyField(User, column_name="user_id", backref="tokens")
        token_hash = pw.TextField(unique=True)
        create_time = pw.BigIntegerField()
        revoke_time = pw.BigIntegerField(null=True)
        expire_time = pw.BigIntegerField(null=True)

        class Meta:
            table_name = "tokens"

    class Config(Base):
        id = pw.AutoField()
        user = pw.ForeignKeyField(User, column_name="user_id", backref="configs")
        provider = pw.TextField()
        ciphertext = pw.BlobField()
        key_id = pw.TextField()
        format_version = pw.IntegerField()
        key_hint = pw.TextField()
        base_url = pw.TextField(default="")
        settings = pw.TextField(default="{}")
        is_active = pw.BooleanField(default=True)
        create_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()
        last_used_time = pw.BigIntegerField(null=True)
        usage_count = pw.BigIntegerField(default=0)

        class Meta:
            table_name = "provider_configs"

    class Audit(Base):
        seq = pw.BigIntegerField(primary_key=True)
        time = pw.BigIntegerField()
        actor = pw.TextField()
        action = pw.TextField()
        provider = pw.TextField()
        outcome = pw.TextField()
        request_id = pw.TextField()
        detail = pw.TextField()
        prev_hash = pw.TextField()
        hash = pw.TextField()

        class Meta:
            table_name = "audit_events"

    class AuditHead(Base):
        id = pw.IntegerField(primary_key=True)
        seq = pw.BigIntegerField()
        hash = pw.TextField()

        class Meta:
            table_name = "audit_head"

    class Migration(Base):
        version = pw.IntegerField(primary_key=True)
        name = pw.TextField()
        applied_time = pw.BigIntegerField()

        class Meta:
            table_name = "schema_migrations"

    class UsageRecord(Base):
        request_id = pw.TextField(primary_key=True)
        time = pw.BigIntegerField()
        user_id = pw.TextField()
        token_id = pw.TextField()
        provider = pw.TextField()
        model = pw.TextField()
        method = pw.TextField()
        stream = pw.BooleanField()
        input_tokens = pw.BigIntegerField()
        output_tokens = pw.BigIntegerField()
        cache_read_input_tokens = pw.BigIntegerField()
        cache_creation_input_tokens = pw.BigIntegerField()
        reasoning_tokens = pw.BigIntegerField()
        usage_reported = pw.BooleanField()
        cost_usd = pw.DoubleField()
        latency_us = pw.BigIntegerField()
        ttft_us = pw.BigIntegerField(null=True)
        status_code = pw.TextField()
        reason = pw.TextField()
        retries = pw.IntegerField()
        ingest_time = pw.BigIntegerField()

        class Meta:
            table_name = "usage_records"

    class UsageDaily(Base):
        user_id = pw.TextField()
        token_id = pw.TextField()
        day = pw.TextField()
        provider = pw.TextField()
        model = pw.TextField()
        calls = pw.BigIntegerField()
        failed_calls = pw.BigIntegerField()
        input_tokens = pw.BigIntegerField()
        output_tokens = pw.BigIntegerField()
        cache_read_input_tokens = pw.BigIntegerField()
        cache_creation_input_tokens = pw.BigIntegerField()
        reasoning_tokens = pw.BigIntegerField()
        cost_usd = pw.DoubleField()

        class Meta:
            table_name = "usage_daily"
            primary_key = pw.CompositeKey("user_id", "day", "provider", "model", "token_id")

    class UsageLimits(Base):
        user_id = pw.TextField()
        token_id = pw.TextField()
        daily_usd = pw.DoubleField(null=True)
        monthly_usd = pw.DoubleField(null=True)
        allow_models = pw.TextField(default="")
        deny_models = pw.TextField(default="")
        update_time = pw.BigIntegerField()

        class Meta:
            table_name = "usage_limits"
            primary_key = pw.CompositeKey("user_id", "token_id")

    return Tables(
        user=User,
        token=Token,
        config=Config,
        audit=Audit,
        audit_head=AuditHead,
        migration=Migration,
        usage_record=UsageRecord,
        usage_daily=UsageDaily,
        usage_limits=UsageLimits,
    )


class Database:
    """One database: its pool, its models, and the threads that talk to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = open_database(url)
        self.is_postgres = isinstance(self.db, pw.PostgresqlDatabase)
        self.tables = define_tables(self.db)
        self._executor: ThreadPoolExecutor | None = None
        self._statements: dict[str, str] = {}
        self._readers: dict[int, sqlite3.Connection] = {}  # read-only connections, by thread

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run hand-written SQL (``?`` placeholders) on the current connection.

        The hot paths (authenticate, resolve, audit append) use these fixed
        statements: building them with the query builder on every call costs more
        CPU than executing them.
        """
        text = self._statements.get(sql)
        if text is None:
            text = self._statements[sql] = sql.replace("?", self.db.param)
        return self.db.execute_sql(text, params)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in this thread inside a pooled connection (timed, by ``fn``'s name)."""
        started = time.perf_counter()
        try:
            with self.db.connection_context():
                return fn(*args)
        finally:
            metrics.db_operation(getattr(fn, "__name__", "other").lstrip("_"), time.perf_counter() - started)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database threads, off the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vault-db")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(self.call, fn, *args))
        except (pw.OperationalError, pw.InterfaceError) as raised:
            exc = original_error(raised)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.error("database call failed: %s", first_line, extra={"event": "database_error"})
            raise DatabaseUnavailable("the vault database is unavailable; retry shortly") from exc

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the read-only ``fn(*args)``, which queries only through ``execute``.

        On SQLite: now, on this thread (see the module docstring); a connection
        error or a "busy" makes it run again on the database threads, which wait
        out the busy timeout and report an unavailable database as ``run`` does.
        On PostgreSQL: ``run``.
        """
        if self.is_postgres or not self.db._state.closed:
            # PostgreSQL, or this thread already holds a connection (a caller on the
            # loop's thread used the database synchronously): the threads.
            return await self.run(fn, *args)
        try:
            if threading.get_ident() not in self._readers:
                # Opening one may wait (for a lock, during recovery): on a thread, once.
                await asyncio.to_thread(self._open_reader, threading.get_ident())
            return self._read_here(fn, *args)
        except (pw.OperationalError, pw.InterfaceError, sqlite3.OperationalError) as exc:
            self._drop_reader(threading.get_ident())
            if _sqlite_code(exc) == sqlite3.SQLITE_READONLY:
                raise  # fn tried to write: a bug to see, not an outage to retry
            return await self.run(fn, *args)

    def _read_here(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with this thread's read-only connection as peewee's connection."""
        started = time.perf_counter()
        conn = self._readers[threading.get_ident()]
        # peewee's connection state is per thread: ours is seen by this thread only,
        # and only while fn runs (a later connection_context here gets the pool's).
        # (peewee has no public way to lend it a connection: its state is set directly.)
        state = self.db._state
        state.set_connection(conn)
        try:
            return fn(*args)
        finally:
            state.reset()
            metrics.db_operation(getattr(fn, "__name__", "other").lstrip("_"), time.perf_counter() - started)

    def _open_reader(self, thread: int) -> None:
        """A connection for ``thread``: the pool's settings, outside the pool, that cannot write or wait."""
        sqlite: Any = pw.SqliteDatabase  # its _connect: the pool's own settings and pragmas, no pool
        conn: sqlite3.Connection = sqlite._connect(self.db)
        conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA busy_timeout = 0")
        if self._readers.setdefault(thread, conn) is not conn:
            conn.close()  # another read of that thread opened one first: keep that one

    def _drop_reader(self, thread: int) -> None:
        conn = self._readers.pop(thread, None)
        if conn is not None:
            conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite).

        When SQLite ends a transaction itself (a full disk, a read-only file, an I/O
        error), peewee's rollback fails with "cannot rollback - no transaction is
        active" and that secondary error used to hide the real one; the real one is
        raised instead.
        """
        try:
            with self.db.atomic():
                yield
        except pw.DatabaseError as exc:
            original = original_error(exc)
            if original is exc:
                raise
            raise original from None

    def lock_for_update(self, query: Any) -> Any:
        """``query`` with ``FOR UPDATE`` where the database has row locks."""
        return query.for_update() if self.is_postgres else query

    def close(self) -> None:
        """Stop the threads and close every pooled connection."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for thread in list(self._readers):
            self._drop_reader(thread)
        self.db.close_all()
