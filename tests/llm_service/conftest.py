"""Fixtures of the LLM service tests: an in-process server with a fake vault."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from testkit.llm_harness import LLMHarness, llm_harness


@pytest.fixture
async def llm() -> AsyncIterator[LLMHarness]:
    """A running LLM server (default settings) with a scripted adapter and a fake vault."""
    async with llm_harness() as harness:
        yield harness
