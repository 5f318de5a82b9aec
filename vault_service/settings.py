"""The vault's typed settings, read once at start from flags and the environment.

Everything the vault is configured with lives in ``VaultSettings``; nothing deeper
in the code reads ``os.environ``. ``from_env`` validates and fails with a message
that says how to fix the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rmllm_common import state
from rmllm_common.secret import Secret

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50052"


class SettingsError(ValueError):
    """A configuration problem, with a message saying how to fix it."""


@dataclass(frozen=True)
class VaultSettings:
    """Everything the vault is configured with."""

    data_dir: Path
    service_token: Secret
    listen: str = DEFAULT_LISTEN
    database_url: str = ""
    allow_custom_base_url: bool = False
    grace_seconds: float = 10.0

    @property
    def effective_database_url(self) -> str:
        """``RMLLM_DATABASE_URL``, else a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'vault.sqlite3'}"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        listen: str | None = None,
        data_dir: str | None = None,
    ) -> VaultSettings:
        """Read and validate settings; generate the embedded defaults on first run."""
        directory = state.ensure_dir(Path(data_dir).expanduser() if data_dir else state.default_data_dir(env))
        token = env.get("RMLLM_SERVICE_TOKEN", "")
        if not token:
            token, created = state.read_or_create_secret(
                directory / state.SERVICE_TOKEN_FILE, state.new_service_token
            )
            if created:
                log.info(
                    "generated the service credential",
                    extra={"path": str(directory / state.SERVICE_TOKEN_FILE)},
                )
        if len(token) < 32:
            raise SettingsError(
                "RMLLM_SERVICE_TOKEN must be at least 32 characters; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls(
            data_dir=directory,
            service_token=Secret(token),
            listen=listen or env.get("RMLLM_VAULT_LISTEN", DEFAULT_LISTEN),
            database_url=env.get("RMLLM_DATABASE_URL", ""),
            allow_custom_base_url=env.get("RMLLM_ALLOW_CUSTOM_BASE_URL", "") == "1",
            grace_seconds=float(env.get("RMLLM_SHUTDOWN_GRACE_SECONDS", "10")),
        )
