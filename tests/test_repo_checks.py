"""Repository checks that CI must fail on: stale generated code, lint, types, buf.

They run the same tools a developer runs (ruff, mypy, buf from tools/, the
generator script), so ``python3 scripts/dev.py test`` is the one command for all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )


def tool(name: str) -> Path:
    return Path(sys.executable).parent / name


def test_generated_code_is_up_to_date() -> None:
    result = run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stderr


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "gen"
    shutil.copytree(ROOT / "gen" / "python", copy)
    stale = copy / "realmultillm" / "llm" / "v1" / "llm_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    result = run(sys.executable, "scripts/gen_protos.py", "--check", "--out", copy)
    assert result.returncode == 1
    assert "realmultillm/llm/v1/llm_pb2.py" in result.stderr


def test_ruff_lint_and_format() -> None:
    lint = run(tool("ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(tool("ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    result = run(tool("mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint() -> None:
    result = run(BUF, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_previous_commit() -> None:
    has_parent = run("git", "rev-parse", "--verify", "--quiet", "HEAD~1:buf.yaml")
    assert has_parent.returncode == 0, "CI needs the previous commit of main (clone without --depth 1)"
    result = run(BUF, "breaking", "--against", ".git#ref=HEAD~1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_removed_field(tmp_path: Path) -> None:
    before = tmp_path / "before"
    after = tmp_path / "after"
    for target in (before, after):
        shutil.copytree(ROOT / "protos", target / "protos")
        shutil.copy(ROOT / "buf.yaml", target / "buf.yaml")
    proto = after / "protos" / "realmultillm" / "llm" / "v1" / "llm.proto"
    proto.write_text(proto.read_text().replace("  string response_id = 6;\n", "", 1))
    result = run(BUF, "breaking", "--against", before, cwd=after)
    assert result.returncode != 0
    assert "response_id" in result.stdout + result.stderr
