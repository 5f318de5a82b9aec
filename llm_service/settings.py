"""The LLM service's typed settings, read once at start from flags and the environment.

Everything the LLM service is configured with lives in ``LLMSettings``; nothing
deeper in the code reads ``os.environ``. The LLM service never has the seed: it
only needs the vault's address and the service credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rmllm_common import state
from rmllm_common.secret import Secret

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_VAULT_ADDR = "127.0.0.1:50052"


class SettingsError(ValueError):
    """A configuration problem, with a message saying how to fix it."""


@dataclass(frozen=True)
class LLMSettings:
    """Everything the LLM service is configured with."""

    service_token: Secret
    listen: str = DEFAULT_LISTEN
    vault_addr: str = DEFAULT_VAULT_ADDR
    allow_custom_base_url: bool = False
    grace_seconds: float = 10.0

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        listen: str | None = None,
        data_dir: str | None = None,
    ) -> LLMSettings:
        """Read and validate settings; share the service credential file on first run."""
        token = env.get("RMLLM_SERVICE_TOKEN", "")
        if not token:
            directory = Path(data_dir).expanduser() if data_dir else state.default_data_dir(env)
            token, _ = state.read_or_create_secret(
                directory / state.SERVICE_TOKEN_FILE, state.new_service_token
            )
        if len(token) < 32:
            raise SettingsError(
                "RMLLM_SERVICE_TOKEN must be at least 32 characters; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls(
            service_token=Secret(token),
            listen=listen or env.get("RMLLM_LLM_LISTEN", DEFAULT_LISTEN),
            vault_addr=env.get("RMLLM_VAULT_ADDR", DEFAULT_VAULT_ADDR),
            allow_custom_base_url=env.get("RMLLM_ALLOW_CUSTOM_BASE_URL", "") == "1",
            grace_seconds=float(env.get("RMLLM_SHUTDOWN_GRACE_SECONDS", "10")),
        )
