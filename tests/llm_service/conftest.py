"""Fixtures of the LLM service tests: an in-process server with a fake vault, the fake
provider in the test's event loop, and an HTTP session for calling adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from fakes.server import FakeProvider
from testkit.llm_harness import LLMHarness, llm_harness


@pytest.fixture
async def llm() -> AsyncIterator[LLMHarness]:
    """A running LLM server (default settings) with a scripted adapter and a fake vault."""
    async with llm_harness() as harness:
        yield harness


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    """The fake provider on a free loopback port."""
    async with FakeProvider() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session, as the service has one per process."""
    async with aiohttp.ClientSession() as session:
        yield session
