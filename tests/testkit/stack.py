"""The whole system as real processes: a fake provider, the vault, the LLM service.

``Stack.start(tmp)`` launches the three on free loopback ports (one worker each),
with ``RMLLM_ALLOW_CUSTOM_BASE_URL=1`` so stored configs may point at the fake,
and creates users with the real operator CLI (``rmllm-vault users create``). The
fake provider is driven over its HTTP control API (``fakes`` package docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit import procs

ROOT = procs.ROOT
VENV_BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """Three running processes and how to reach them."""

    data_dir: Path
    fake: procs.Service
    vault: procs.Service
    llm: procs.Service
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, tmp: Path, **extra_env: str) -> Stack:
        data_dir = tmp / "state"
        data_dir.mkdir(mode=0o700)
        env = {
            "RMLLM_DATA_DIR": str(data_dir),
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
            # The fake provider listens on loopback, on a port picked at start.
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",
            "RMLLM_RETRY_ATTEMPTS": "1",
            **extra_env,
        }
        fake = procs.start(["fakes.server", "--port", "0"], {"PYTHONPATH": str(ROOT / "tests")})
        vault = procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], env)
        env["RMLLM_VAULT_ADDR"] = vault.address
        llm = procs.start(["llm_service.cli", "serve", "--listen", "127.0.0.1:0"], env)
        return cls(data_dir=data_dir, fake=fake, vault=vault, llm=llm, env=env)

    def stop(self) -> None:
        for service in (self.llm, self.vault, self.fake):
            service.stop()

    def restart_vault(self) -> None:
        """Start the vault again on the same address and data (after ``vault.stop()``)."""
        self.vault = procs.start(["vault_service.cli", "serve", "--listen", self.vault.address], self.env)

    # -- operator CLI ---------------------------------------------------------------

    def vault_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vault_service.cli", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **self.env},
            cwd=ROOT,
            timeout=60,
        )

    def create_user(self, name: str) -> str:
        """A new user's token, as ``rmllm-vault users create`` prints it (last line)."""
        result = self.vault_cli("users", "create", name)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    # -- the fake provider ----------------------------------------------------------

    @property
    def fake_origin(self) -> str:
        return f"http://{self.fake.address}"

    def base_url(self, provider: str) -> str:
        """The fake's base URL for a registry provider."""
        from fakes.server import FakeProvider

        helper = FakeProvider()
        helper.host, helper.port = "127.0.0.1", self.fake.port
        return helper.base_url(provider)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - http to the loopback fake
            f"{self.fake_origin}/_fake/{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback fake
            return json.loads(reply.read())

    def enqueue(self, *scenarios: dict[str, Any]) -> None:
        self.control("POST", "scenarios", list(scenarios))

    def requests(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "requests"))

    def reset_fake(self) -> None:
        self.control("POST", "reset", {})

    # -- clients ----------------------------------------------------------------------

    def client_env(self, token: str) -> dict[str, str]:
        """What the CLI and the Node client read to reach this stack."""
        return {
            **os.environ,
            "RMLLM_TARGET": self.llm.address,
            "RMLLM_VAULT_TARGET": self.vault.address,
            "RMLLM_TOKEN": token,
            "RMLLM_CONFIG": str(self.data_dir / "no-config.toml"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
