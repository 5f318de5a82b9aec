"""The Docker build context holds what the image needs and never state or secrets.

Issue 13 item 15: without a ``.dockerignore`` the context was 545 MB and carried
``.venv``, ``node_modules`` and ``.rmllm/`` (the seed and the service credential).
Docker cannot run here, so the context is computed from ``.dockerignore`` by the
Docker SDK's own implementation of its matching rules
(``docker.utils.build.exclude_paths``, what ``docker build`` sends).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_PARTS = {
    ".rmllm",
    "secrets",
    ".venv",
    "node_modules",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "tests",
}
FORBIDDEN_NAMES = re.compile(
    r"^(vault_seed|service_token|\.env(\..*)?|.*\.sqlite3.*|.*\.pem|.*\.key|.*\.pyc)$"
)


def context(root: Path) -> set[str]:
    """The files ``docker build`` would send from ``root``, by its ``.dockerignore``."""
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {p for p in exclude_paths(str(root), patterns) if (root / p).is_file()}


def copied_sources() -> list[str]:
    """The sources of every ``COPY`` in the Dockerfile (not ``--from`` another stage)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_a_checkout_full_of_state_and_secrets_sends_none_of_them(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    wanted = [
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "gen/python/realmultillm/vault/v1/vault_pb2.py",
        "rmllm_common/logs.py",
        "rmllm_common/providers.toml",
        "vault_service/cli.py",
        "llm_service/server.py",
        "clients/cli.py",
    ]
    unwanted = [
        ".rmllm/vault_seed",
        ".rmllm/service_token",
        ".rmllm/vault.sqlite3",
        ".rmllm/vault.sqlite3-wal",
        "secrets/vault_seed",
        "secrets/service_token",
        ".env",
        ".env.production",
        "vault_service/.env",
        ".venv/lib/python3.11/site-packages/grpc/__init__.py",
        "clients/node/node_modules/@grpc/grpc-js/index.js",
        "clients/node/index.js",
        ".git/config",
        "rmllm_common/__pycache__/logs.cpython-311.pyc",
        "llm_service/.mypy_cache/x.json",
        "realmultillm.egg-info/PKG-INFO",
        "tests/test_x.py",
        "docs/SECURITY.md",
        "bench/cli.py",
        "data/vault.sqlite3",
        "gen/python/secrets/x",
        "rmllm_common/tls.key",
    ]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert context(tmp_path) == {".dockerignore", *wanted}


def test_the_repository_context_has_what_the_image_copies_and_no_state() -> None:
    sent = context(ROOT)
    for source in copied_sources():
        assert source in sent or any(p.startswith(source.rstrip("/") + "/") for p in sent), source
    for path in sent:
        parts = Path(path).parts
        assert not FORBIDDEN_PARTS & set(parts), path
        assert not FORBIDDEN_NAMES.match(parts[-1]), path
    assert sum((ROOT / p).stat().st_size for p in sent) < 20 * 1024 * 1024


@pytest.mark.parametrize("source", ["rmllm_common", "vault_service", "llm_service", "clients", "gen"])
def test_every_package_the_wheel_builds_from_is_sent(source: str) -> None:
    sent = context(ROOT)
    on_disk = {
        str(p.relative_to(ROOT))
        for p in (ROOT / source).rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".pyi", ".toml", ".binpb", ".typed"}
        and "node" not in p.parts
        and "__pycache__" not in p.parts
    }
    assert on_disk and on_disk <= sent
