"""The vault's typed settings, read once at start from flags and the environment.

Everything the vault is configured with lives in ``VaultSettings``; nothing deeper
in the code reads ``os.environ``. ``from_env`` validates and fails with a message
that says how to fix the problem. The seed comes from ``RMLLM_VAULT_SEED``, else
the file named by ``RMLLM_VAULT_SEED_FILE``, else ``vault_seed`` in the data
directory, which the first start generates (0600) and asks the operator to back up.
Operator commands that need no secret (users, tokens, audit) skip loading them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rmllm_common import randomsecret, state
from rmllm_common.secret import Secret
from vault_service import authguard
from vault_service import seed as seed_policy

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50052"
DATABASE_FILE = "vault.sqlite3"


class SettingsError(ValueError):
    """A configuration problem, with a message saying how to fix it."""


@dataclass(frozen=True)
class VaultSettings:
    """Everything the vault is configured with."""

    data_dir: Path
    service_token: Secret = field(default_factory=lambda: Secret(""))
    seed: Secret = field(default_factory=lambda: Secret(""))
    old_seeds: tuple[Secret, ...] = ()
    listen: str = DEFAULT_LISTEN
    database_url: str = ""
    allow_custom_base_url: bool = False
    grace_seconds: float = 10.0
    # SO_REUSEPORT: only for a worker of ``serve --workers N`` (the hidden --shared-port).
    reuse_port: bool = False
    # Failed authentications: budgets per peer and per token prefix, and the audit interval.
    auth_limits: authguard.Limits = field(default_factory=authguard.Limits)
    # Set when this start generated the seed file (first run).
    generated_seed_file: Path | None = None

    @property
    def effective_database_url(self) -> str:
        """``RMLLM_DATABASE_URL``, else a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / DATABASE_FILE}"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        listen: str | None = None,
        data_dir: str | None = None,
        with_secrets: bool = True,
        generate_seed: bool = True,
    ) -> VaultSettings:
        """Read and validate settings; generate the embedded defaults on first run.

        ``with_secrets=False`` (operator commands that touch only users, tokens and
        the audit log) reads neither the seed nor the service credential;
        ``generate_seed=False`` (``rewrap``) refuses to run without an existing seed.
        """
        directory = state.ensure_dir(Path(data_dir).expanduser() if data_dir else state.default_data_dir(env))
        try:
            grace = float(env.get("RMLLM_SHUTDOWN_GRACE_SECONDS", "10"))
        except ValueError as exc:
            raise SettingsError("RMLLM_SHUTDOWN_GRACE_SECONDS must be a number of seconds") from exc
        base = cls(
            data_dir=directory,
            listen=listen or env.get("RMLLM_VAULT_LISTEN", DEFAULT_LISTEN),
            database_url=env.get("RMLLM_DATABASE_URL", "").strip(),
            allow_custom_base_url=env.get("RMLLM_ALLOW_CUSTOM_BASE_URL", "") == "1",
            grace_seconds=grace,
            auth_limits=_auth_limits(env),
        )
        if not with_secrets:
            return base
        seed, generated = _seed(env, directory, generate_seed)
        return dataclasses.replace(
            base,
            service_token=_service_token(env, directory),
            seed=seed,
            generated_seed_file=generated,
            old_seeds=_old_seeds(env),
        )


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise SettingsError(f"{name} must be a number from {low:g} to {high:g}, not {raw[:20]!r}")
    return value


def _auth_limits(env: Mapping[str, str]) -> authguard.Limits:
    default = authguard.Limits()
    return authguard.Limits(
        peer_per_minute=_number(
            env, "RMLLM_VAULT_AUTH_FAILURES_PER_MINUTE", default.peer_per_minute, 0, 1_000_000
        ),
        peer_burst=int(_number(env, "RMLLM_VAULT_AUTH_FAILURE_BURST", default.peer_burst, 1, 1_000_000)),
        prefix_per_minute=_number(
            env, "RMLLM_VAULT_TOKEN_FAILURES_PER_MINUTE", default.prefix_per_minute, 0, 1_000_000
        ),
        prefix_burst=int(_number(env, "RMLLM_VAULT_TOKEN_FAILURE_BURST", default.prefix_burst, 1, 1_000_000)),
        audit_interval_seconds=_number(
            env, "RMLLM_VAULT_AUTH_AUDIT_INTERVAL_SECONDS", default.audit_interval_seconds, 1, 86_400
        ),
    )


def _service_token(env: Mapping[str, str], directory: Path) -> Secret:
    try:
        token, created = state.service_token(env, directory)
    except randomsecret.WeakSecret as exc:
        raise SettingsError(str(exc)) from None
    if created:
        log.info(
            "generated the service credential", extra={"path": str(directory / state.SERVICE_TOKEN_FILE)}
        )
    return Secret(token)


def _seed(env: Mapping[str, str], directory: Path, generate: bool) -> tuple[Secret, Path | None]:
    """The seed, and the path of the seed file if this call generated it."""
    value = env.get("RMLLM_VAULT_SEED", "").strip()
    name = "RMLLM_VAULT_SEED"
    generated = None
    if not value and env.get("RMLLM_VAULT_SEED_FILE"):
        path = Path(env["RMLLM_VAULT_SEED_FILE"]).expanduser()
        name = f"the seed file {path}"
        try:
            value = state.read_secret_file(path)
        except FileNotFoundError as exc:
            raise SettingsError(f"RMLLM_VAULT_SEED_FILE names {path}, which does not exist") from exc
    elif not value:
        path = directory / state.SEED_FILE
        name = f"the seed file {path}"
        if not generate and not path.exists():
            raise SettingsError(
                f"no seed is configured: set RMLLM_VAULT_SEED or RMLLM_VAULT_SEED_FILE, or restore {path}"
            )
        value, created = state.read_or_create_secret(path, seed_policy.generate)
        if created:
            generated = path
            log.warning(
                "generated a new encryption seed; back this file up: without it no stored key can be "
                "decrypted",
                extra={"path": str(path), "event": "seed_generated"},
            )
    try:
        seed_policy.check(value, name)
    except seed_policy.WeakSeed as exc:
        raise SettingsError(str(exc)) from exc
    return Secret(value), generated


def _old_seeds(env: Mapping[str, str]) -> tuple[Secret, ...]:
    olds = tuple(part.strip() for part in env.get("RMLLM_VAULT_OLD_SEEDS", "").split(",") if part.strip())
    for index, value in enumerate(olds):
        try:
            seed_policy.check_legacy(value, f"RMLLM_VAULT_OLD_SEEDS[{index}]")
        except seed_policy.WeakSeed as exc:
            raise SettingsError(str(exc)) from exc
    return tuple(Secret(v) for v in olds)
