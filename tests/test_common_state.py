"""rmllm_common.state: the data directory is created private, and an open one is refused, not chmodded.

Issue 13 item 12: an existing data directory that other users could read was
silently chmodded to 0700, although the docstring said it was refused.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import procs

from rmllm_common import state


def test_a_new_data_directory_is_private(tmp_path: Path) -> None:
    created = state.ensure_dir(tmp_path / "a" / "state")
    assert stat.S_IMODE(created.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o1777])
def test_an_existing_open_directory_is_refused_and_left_as_it_was(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(PermissionError, match=rf"mode {mode & 0o7777:o}\).*run: chmod 700 {shared}"):
        state.ensure_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == mode


@pytest.mark.parametrize("module", ["vault_service.cli", "llm_service.cli"])
def test_both_services_refuse_to_start_in_an_open_data_directory(tmp_path: Path, module: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", module, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(shared)],
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"run: chmod 700 {shared}" in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert not (shared / "vault_seed").exists() and not (shared / "service_token").exists()
