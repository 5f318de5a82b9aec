"""Fixtures for the client tests: fake LLM and vault servers, and clients pointed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

from clients import AsyncClient, Client

REPLICA_KEY = "sk-good-REPLICA-key-0001"


@pytest.fixture
def fake() -> Iterator[FakeServers]:
    """Fresh fake servers (empty vault) for one test."""
    servers = FakeServers().start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def client(fake: FakeServers) -> Iterator[Client]:
    with Client(TOKEN, llm_target=fake.llm_target, vault_target=fake.vault_target, timeout=10) as c:
        yield c


@pytest.fixture
async def aclient(fake: FakeServers) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        TOKEN, llm_target=fake.llm_target, vault_target=fake.vault_target, timeout=10
    ) as c:
        yield c


@pytest.fixture
def replicas() -> Iterator[list[FakeServers]]:
    """Two fake LLM services (each with its vault), playing two replicas; an OpenAI key on both."""
    servers = [FakeServers().start(), FakeServers().start()]
    try:
        for fake in servers:
            with Client(TOKEN, llm_target=fake.llm_target, vault_target=fake.vault_target) as client:
                client.put_config("openai", REPLICA_KEY)
        yield servers
    finally:
        for fake in servers:
            fake.stop()
