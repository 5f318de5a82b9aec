"""The vault's typed settings, read once at start from flags and the environment.

Everything the vault is configured with lives in ``VaultSettings``; nothing deeper
in the code reads ``os.environ``. ``from_env`` validates and fails with a message
that says how to fix the problem. The seed comes from ``RMLLM_VAULT_SEED``, else
the file named by ``RMLLM_VAULT_SEED_FILE``, else ``vault_seed`` in the data
directory, which the first start generates (0600) and asks the operator to back up.
Operator commands that need no secret (users, tokens, audit) skip loading them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rmllm_common import settings as parse
from rmllm_common import state
from rmllm_common.secret import Secret
from rmllm_common.settings import SettingsError
from rmllm_common.telemetry import TelemetrySettings
from vault_service import authguard
from vault_service import seed as seed_policy

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50052"
DATABASE_FILE = "vault.sqlite3"


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
    log_level: str = "info"
    workers: int = 1
    # Raw usage records older than this are deleted (the daily rollups are kept). At least
    # a day: ingestion is idempotent on the raw rows, and a retried batch can come minutes late.
    usage_retention_days: float = 90.0
    # SO_REUSEPORT: only for a worker of ``serve --workers N`` (the hidden --shared-port).
    reuse_port: bool = False
    # Failed authentications: budgets per peer and per token prefix, and the audit interval.
    auth_limits: authguard.Limits = field(default_factory=authguard.Limits)
    # Set when this start generated the seed file (first run).
    generated_seed_file: Path | None = None
    # Prometheus and OpenTelemetry opt-ins (rmllm_common.telemetry).
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

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
        log_level: str | None = None,
        workers: int | None = None,
        metrics_listen: str | None = None,
    ) -> VaultSettings:
        """Read and validate settings; generate the embedded defaults on first run.

        ``with_secrets=False`` (operator commands that touch only users, tokens and
        the audit log) reads neither the seed nor the service credential;
        ``generate_seed=False`` (``rewrap``) refuses to run without an existing seed.
        """
        directory = state.ensure_dir(Path(data_dir).expanduser() if data_dir else state.default_data_dir(env))
        base = cls(
            data_dir=directory,
            listen=parse.check_address("--listen", listen or env.get("RMLLM_VAULT_LISTEN") or DEFAULT_LISTEN),
            database_url=env.get("RMLLM_DATABASE_URL", "").strip(),
            allow_custom_base_url=parse.flag(env, "RMLLM_ALLOW_CUSTOM_BASE_URL"),
            grace_seconds=parse.number(env, "RMLLM_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 3600.0),
            log_level=parse.log_level(env, log_level),
            workers=parse.workers(env, workers),
            usage_retention_days=parse.number(env, "RMLLM_USAGE_RETENTION_DAYS", 90.0, 1.0, 36_500.0),
            auth_limits=_auth_limits(env),
            telemetry=_telemetry(env, metrics_listen),
        )
        return base.with_secrets(env, generate_seed=generate_seed) if with_secrets else base

    def with_secrets(self, env: Mapping[str, str], *, generate_seed: bool = True) -> VaultSettings:
        """These settings with the service credential and the seeds read (see ``from_env``)."""
        service_token = parse.service_credential(env, self.data_dir)
        seed, generated = _seed(env, self.data_dir, generate_seed)
        return replace(
            self,
            service_token=service_token,
            seed=seed,
            generated_seed_file=generated,
            old_seeds=_old_seeds(env),
        )


def _auth_limits(env: Mapping[str, str]) -> authguard.Limits:
    default = authguard.Limits()
    return authguard.Limits(
        peer_per_minute=parse.number(
            env, "RMLLM_VAULT_AUTH_FAILURES_PER_MINUTE", default.peer_per_minute, 0, 1_000_000
        ),
        peer_burst=parse.integer(env, "RMLLM_VAULT_AUTH_FAILURE_BURST", default.peer_burst, 1, 1_000_000),
        prefix_per_minute=parse.number(
            env, "RMLLM_VAULT_TOKEN_FAILURES_PER_MINUTE", default.prefix_per_minute, 0, 1_000_000
        ),
        prefix_burst=parse.integer(
            env, "RMLLM_VAULT_TOKEN_FAILURE_BURST", default.prefix_burst, 1, 1_000_000
        ),
        audit_interval_seconds=parse.number(
            env, "RMLLM_VAULT_AUTH_AUDIT_INTERVAL_SECONDS", default.audit_interval_seconds, 1, 86_400
        ),
    )


def _telemetry(env: Mapping[str, str], metrics_listen: str | None) -> TelemetrySettings:
    try:
        return TelemetrySettings.from_env(env, metrics_listen)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


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


__all__ = ["DEFAULT_LISTEN", "SettingsError", "VaultSettings"]
