"""The operator's path with tools nobody here wrote: the CLI makes a user, grpcurl manages keys.

A real ``rmllm-vault serve`` subprocess logs at DEBUG; afterwards neither its logs,
the responses nor the database file contain the key or the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import grpcurl, procs

SERVICE = "realmultillm.vault.v1.VaultService"
KEY = "sk-proj-grpcurl-canary-7Fq2Lm9Xw4"
UPDATED_KEY = "sk-proj-rotated-canary-3Jd8Ks1Pz6"


@pytest.fixture
def served(data_dir: Path) -> Iterator[procs.Service]:
    env = {"RMLLM_DATA_DIR": str(data_dir), "RMLLM_LOG_LEVEL": "debug"}
    running = procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], env)
    yield running
    running.stop()


def operator(data_dir: Path, *argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "vault_service.cli", *argv],
        capture_output=True,
        text=True,
        env={"RMLLM_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        cwd=procs.ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def call(address: str, token: str, method: str, data: Any) -> Any:
    result = grpcurl.run(address, f"{SERVICE}/{method}", data=data, token=token)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_operator_manages_keys_with_grpcurl(served: procs.Service, data_dir: Path) -> None:
    token = operator(data_dir, "users", "create", "alice").strip().splitlines()[-1]
    address = served.address
    replies: list[str] = []

    put = call(address, token, "PutProviderConfig", {"provider": "openai", "api_key": KEY})
    replies.append(json.dumps(put))
    assert put["config"]["provider"] == "openai" and put["config"]["keyHint"] == KEY[-4:]

    listed = call(address, token, "ListProviderConfigs", {})
    replies.append(json.dumps(listed))
    assert [c["provider"] for c in listed["configs"]] == ["openai"]

    updated = call(
        address,
        token,
        "UpdateProviderConfig",
        {
            "config": {"provider": "openai", "settings": {"default_model": "gpt-4o", "temperature": 0.2}},
            "update_mask": {"paths": ["settings"]},
        },
    )
    replies.append(json.dumps(updated))
    assert updated["config"]["settings"] == {
        "defaultModel": "gpt-4o",
        "temperature": 0.2,
    }  # canonical JSON names

    replaced = call(address, token, "PutProviderConfig", {"provider": "openai-api", "api_key": UPDATED_KEY})
    replies.append(json.dumps(replaced))
    assert replaced["config"]["keyHint"] == UPDATED_KEY[-4:]

    got = call(address, token, "GetProviderConfig", {"provider": "openai"})
    replies.append(json.dumps(got))
    # The one RPC that returns a key, to the holder of the service credential only.
    service_token = (data_dir / "service_token").read_text().strip()
    resolved = call(address, service_token, "ResolveCredentials", {"user_token": token, "provider": "openai"})
    assert resolved["apiKey"] == UPDATED_KEY and resolved["provider"] == "openai"
    deleted = call(address, token, "DeleteProviderConfig", {"provider": "openai"})
    assert deleted == {"provider": "openai"}
    assert call(address, token, "ListProviderConfigs", {}) == {}

    refused = grpcurl.run(address, f"{SERVICE}/ListProviderConfigs", data={})
    assert (
        refused.returncode != 0 and "Unauthenticated" in refused.stderr and "TOKEN_INVALID" in refused.stderr
    )
    denied = grpcurl.run(
        address,
        f"{SERVICE}/ResolveCredentials",
        data={"user_token": token, "provider": "openai"},
        token=token,
    )
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr

    served.stop()
    assert "audit: the hash chain is intact" in operator(data_dir, "audit", "verify")
    logs = served.logs
    assert '"level": "debug"' in logs  # the secrets below were looked for in DEBUG output
    stored = b"".join(p.read_bytes() for p in data_dir.glob("vault.sqlite3*"))
    assert oct((data_dir / "vault.sqlite3").stat().st_mode & 0o777) == "0o600"
    for secret in (KEY, UPDATED_KEY, token, token.removeprefix("rmk_"), service_token):
        assert secret not in logs
        assert all(secret not in reply for reply in replies)
        assert secret.encode() not in stored
