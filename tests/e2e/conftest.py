"""One live stack (fake provider, vault, LLM service as real processes) per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack.start(tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def token(stack: Stack) -> str:
    return stack.create_user("e2e")


@pytest.fixture
def fresh_fake(stack: Stack) -> Iterator[Stack]:
    stack.reset_fake()
    yield stack


@pytest.fixture
def tmp_state(tmp_path: Path) -> Path:
    return tmp_path
