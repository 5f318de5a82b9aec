"""The hot reads (``Database.read``): on the event loop for SQLite, on the threads for PostgreSQL.

On SQLite a resolve's or an authentication's read runs at once on the calling
thread, on a read-only connection of its own (opened once, off the loop), and still sees every committed
revocation, disabled user and changed key at once; it can never write; a read
told "busy" (or any connection error) runs again on the database threads. On
PostgreSQL it is a thread hop, as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import grpc
import peewee as pw
import pytest
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Vault, md

from rmllm_common.errors import UserDisabled
from vault_service import accounts
from vault_service.database import Database

KEY = "sk-proj-0123456789abcdefghij"
SERVICE = md(SERVICE_TOKEN)


async def test_a_hot_read_runs_on_the_loop_on_sqlite_only(database: Database) -> None:
    here = threading.get_ident()
    ran_on = await database.read(threading.get_ident)
    assert (ran_on == here) is (not database.is_postgres)


async def test_a_read_on_the_loop_sees_what_other_connections_commit(database: Database) -> None:
    principal, token_id, token = database.call(accounts.create_user, database, "alice")
    assert await database.read(accounts.authenticate, database, token.reveal()) == principal
    await database.run(accounts.revoke_token, database, token_id)
    assert await database.read(accounts.authenticate, database, token.reveal()) is None
    _, _, other = await database.run(accounts.create_user, database, "bob")
    await database.run(accounts.disable_user, database, "bob")
    with pytest.raises(UserDisabled):
        await database.read(accounts.authenticate, database, other.reveal())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_loops_reader_cannot_write(database: Database) -> None:
    with pytest.raises(pw.OperationalError, match="readonly"):
        await database.read(database.execute, "UPDATE audit_head SET seq = seq + 1")
    assert database.call(database.execute, "SELECT seq FROM audit_head").fetchone() == (0,)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_busy_read_runs_again_on_the_threads(database: Database) -> None:
    loop_thread = threading.get_ident()

    def busy_on_the_loop() -> int:
        if threading.get_ident() == loop_thread:
            raise pw.OperationalError(sqlite3.OperationalError("database is locked"))
        return threading.get_ident()

    assert await database.read(busy_on_the_loop) != loop_thread
    assert await database.read(threading.get_ident) == loop_thread  # a fresh reader next time


async def test_resolves_see_revocation_and_disabling_at_once(vault: Vault) -> None:
    token = vault.make_user("alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key=KEY), metadata=md(token)
    )
    request = pb.ResolveCredentialsRequest(user_token=token, provider="openai")
    assert (await vault.stub.ResolveCredentials(request, metadata=SERVICE)).api_key == KEY
    vault.db.call(accounts.disable_user, vault.db, "alice")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.ResolveCredentials(request, metadata=SERVICE)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    vault.db.call(accounts.enable_user, vault.db, "alice")
    assert (await vault.stub.ResolveCredentials(request, metadata=SERVICE)).api_key == KEY
    (listed,) = vault.db.call(accounts.list_tokens, vault.db, "alice")
    vault.db.call(accounts.revoke_token, vault.db, listed.token_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.ResolveCredentials(request, metadata=SERVICE)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_first_reads_at_once_open_one_connection_off_the_loop(database: Database) -> None:
    here = threading.get_ident()
    ran_on = await asyncio.gather(*(database.read(threading.get_ident) for _ in range(20)))
    assert set(ran_on) == {here}
    assert list(database._readers) == [here]  # the others' connections were closed, not leaked
