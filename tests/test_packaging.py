"""The wheel installs every package, the generated code and the registry data, and
the services and clients import the generated modules the same way as in the
editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

PROBE = """
import json, realmultillm.llm.v1.llm_pb2 as llm, realmultillm.vault.v1.vault_pb2 as vault
import vault_service.server, llm_service.server, clients, rmllm_common.registry as registry
print(json.dumps({
    "llm": llm.__file__, "vault": vault.__file__, "server": vault_service.server.__file__,
    "providers": sorted(registry.default_registry().providers),
}))
"""


def test_wheel_contains_and_imports_everything(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path / "w",
            ROOT,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "w").glob("realmultillm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "realmultillm/llm/v1/llm_pb2.py",
        "realmultillm/llm/v1/llm_pb2.pyi",
        "realmultillm/vault/v1/vault_pb2_grpc.py",
        "rmllm_common/providers.toml",
        "realmultillm/descriptors.binpb",
        "vault_service/server.py",
        "llm_service/server.py",
        "clients/cli.py",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith(("tests/", "gen/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in (
        "rmllm-vault = vault_service.cli:main",
        "rmllm-llm = llm_service.cli:main",
        "rmllm = clients.cli:main",
    ):
        assert script in scripts

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, cwd=tmp_path, env=env
    )
    assert probe.returncode == 0, probe.stderr
    paths = probe.stdout
    assert str(target) in paths and str(ROOT / "gen") not in paths
    assert '"openai"' in paths and '"llama"' in paths
