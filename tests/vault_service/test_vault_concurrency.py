"""Concurrent PutProviderConfig calls: one row per (user, provider), nothing lost.

Through one in-process vault on SQLite, and through two vault processes sharing
the database (a SQLite file, and PostgreSQL), as a deployment with two replicas
would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from realmultillm.vault.v1 import vault_pb2 as pb
from realmultillm.vault.v1 import vault_pb2_grpc
from testkit import procs
from testkit.vault import SEED, SERVICE_TOKEN, Vault, md

from vault_service import accounts, audit, migrations
from vault_service.database import Database

PROVIDERS = {
    "openai": "sk-",
    "anthropic": "sk-ant-",
    "google": "AIza",
    "openrouter": "sk-or-",
    "grok": "xai-",
}


async def hammer(stubs: list[Any], token: str, db: Database) -> None:
    """50 puts on one row, then 5 providers x 4 rounds concurrently, spread over ``stubs``."""
    keys = [f"sk-race-{i:02d}-0123456789" for i in range(50)]
    await asyncio.gather(
        *(
            stubs[i % len(stubs)].PutProviderConfig(
                pb.PutProviderConfigRequest(provider="openai", api_key=key), metadata=md(token)
            )
            for i, key in enumerate(keys)
        )
    )
    model = db.tables.config
    assert db.call(lambda: model.select().where(model.provider == "openai").count()) == 1
    for stub in stubs:
        resolved = await stub.ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider="openai"), metadata=md(SERVICE_TOKEN)
        )
        assert resolved.api_key in keys

    await asyncio.gather(
        *(
            stubs[(i + round_) % len(stubs)].PutProviderConfig(
                pb.PutProviderConfigRequest(provider=provider, api_key=f"{prefix}{provider}-round-{round_}"),
                metadata=md(token),
            )
            for round_ in range(4)
            for i, (provider, prefix) in enumerate(PROVIDERS.items())
        )
    )
    listed = await stubs[0].ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(token))
    assert [c.provider for c in listed.configs] == sorted(PROVIDERS)
    for provider, prefix in PROVIDERS.items():
        resolved = await stubs[-1].ResolveCredentials(
            pb.ResolveCredentialsRequest(user_token=token, provider=provider), metadata=md(SERVICE_TOKEN)
        )
        assert resolved.api_key.startswith(f"{prefix}{provider}-round-")
    report = db.call(audit.verify, db)
    assert report.ok, report.problems
    assert report.rows == 2 + 50 + len(stubs) + 20 + len(PROVIDERS)  # every call audited once


async def test_concurrent_puts_in_one_process(vault_factory: Callable[..., Awaitable[Vault]]) -> None:
    vault = await vault_factory()
    await hammer([vault.stub], vault.make_user("alice"), vault.db)


@pytest.fixture
def two_vaults(db_url: str, data_dir: Any) -> Iterator[tuple[list[procs.Service], Database]]:
    """Two vault processes sharing the database at ``db_url`` (SQLite file or PostgreSQL)."""
    db = Database(db_url)
    migrations.migrate(db)
    env = {
        "RMLLM_DATABASE_URL": db_url,
        "RMLLM_VAULT_SEED": SEED,
        "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
        "RMLLM_DATA_DIR": str(data_dir),
    }
    services = [procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], env) for _ in range(2)]
    yield services, db
    for service in services:
        service.stop()
    db.close()


async def test_concurrent_puts_with_two_vault_processes(
    two_vaults: tuple[list[procs.Service], Database],
) -> None:
    services, db = two_vaults
    _, _, token = db.call(accounts.create_user, db, "alice")
    channels = [grpc.aio.insecure_channel(s.address) for s in services]
    try:
        await hammer([vault_pb2_grpc.VaultServiceStub(c) for c in channels], token.reveal(), db)
    finally:
        for channel in channels:
            await channel.close()
    for service in services:
        assert "Traceback" not in service.logs
