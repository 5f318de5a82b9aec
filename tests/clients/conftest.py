"""Fixtures for the client tests: fake LLM and vault servers, and clients pointed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

from clients import AsyncClient, Client


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
