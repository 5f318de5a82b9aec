"""Fixtures every test shares: the loopback-only guard and free state directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from testkit.netguard import loopback_only

# No per-example deadline: this machine is shared and noisy, and speed is the
# benchmarks' business, never the tests'.
settings.register_profile("rmllm", deadline=None, print_blob=True)
settings.load_profile("rmllm")


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """No test reaches anything but loopback (house rule 9)."""
    with loopback_only():
        yield


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, private state directory for one service."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory
