"""Fixtures of the vault tests: databases on both backends, an in-process vault, users.

``db_url`` is parametrised over SQLite (a file in the test's directory) and the
local PostgreSQL (a schema of its own in database ``test``, dropped afterwards),
so every test that takes it runs on both. ``vault`` is a real VaultService server
on a loopback port with its stub; ``make_user`` creates a user and returns its
token, as the operator CLI would.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee as pw
import pytest
from realmultillm.vault.v1 import vault_pb2_grpc
from testkit.vault import Failure, Vault, failure, settings_for

from vault_service import migrations
from vault_service.database import Database
from vault_service.server import build_server

PG_ADMIN: dict[str, Any] = {"database": "test", "host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = "vault_test_" + secrets.token_hex(6)
    admin: Any = pw.PostgresqlDatabase(**PG_ADMIN)
    admin.execute_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}"
    finally:
        admin.execute_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """The database at ``db_url``, migrated."""
    db = Database(db_url)
    migrations.migrate(db)
    yield db
    db.close()


@pytest.fixture
async def vault_factory(data_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Vault]]]:
    """Start in-process vaults with settings overrides; all are stopped afterwards."""
    started: list[Vault] = []

    async def start(db_url: str = "", **overrides: Any) -> Vault:
        settings = settings_for(data_dir, db_url, **overrides)
        handle = await build_server(settings)
        await handle.server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}")
        db = Database(settings.effective_database_url)
        vault = Vault(handle, channel, vault_pb2_grpc.VaultServiceStub(channel), db, settings)
        started.append(vault)
        return vault

    yield start
    for vault in started:
        await vault.channel.close()
        await vault.handle.stop(0)
        vault.db.close()


@pytest.fixture
async def vault(vault_factory: Callable[..., Awaitable[Vault]]) -> Vault:
    """A vault on SQLite in the test's data directory."""
    return await vault_factory()


@pytest.fixture
def fails() -> Callable[[Awaitable[Any]], Awaitable[Failure]]:
    """``await fails(stub.X(...))``: the call must fail; returns its decoded status."""

    async def check(call: Awaitable[Any]) -> Failure:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return failure(caught.value)

    return check
