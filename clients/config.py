"""Settings of the ``rmllm`` command: targets, token and TLS files, from env and a 0600 file.

Each value comes from the first of: a command-line flag, the environment, the
config file, the default. Environment: ``RMLLM_TARGET`` (LLM service, default
``127.0.0.1:50051``), ``RMLLM_VAULT_TARGET`` (vault, default ``127.0.0.1:50052``),
``RMLLM_TOKEN``, ``RMLLM_TLS_CA`` / ``RMLLM_TLS_CERT`` / ``RMLLM_TLS_KEY`` (PEM file
paths; TLS is on when a CA is given or ``RMLLM_TLS=1``), and ``RMLLM_CONFIG`` (the
file; default ``$XDG_CONFIG_HOME/realmultillm/config.toml``, else
``~/.config/realmultillm/config.toml``). The file is TOML with the keys ``token``,
``llm_target``, ``vault_target``, ``tls``, ``tls_ca``, ``tls_cert``, ``tls_key``::

    token = "rmk_..."
    llm_target = "llm.internal:50051"

Because it holds the token, a file that other users can read is refused with the
command that fixes it (``chmod 600 FILE``). ``save_token`` writes it with mode 0600.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clients.channels import DEFAULT_LLM_TARGET, DEFAULT_VAULT_TARGET, Tls

FILE_KEYS = ("token", "llm_target", "vault_target", "tls", "tls_ca", "tls_cert", "tls_key")
TRUE = {"1", "true", "yes", "on"}


class ConfigError(Exception):
    """A problem with the local configuration; the message says how to fix it."""


def config_path(env: Mapping[str, str]) -> Path:
    """Where the config file is (it need not exist)."""
    if env.get("RMLLM_CONFIG"):
        return Path(env["RMLLM_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "realmultillm" / "config.toml"


def read_file(path: Path) -> dict[str, str]:
    """The file's settings; empty when it does not exist. Refuses a file others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"the config file {path} can be read by other users: run `chmod 600 {path}`")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc}): fix or delete it") from exc
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in FILE_KEYS:
            raise ConfigError(f"unknown setting {key!r} in {path}: the keys are {', '.join(FILE_KEYS)}")
        values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def _pem(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class CliSettings:
    """Everything the command needs to reach the services."""

    llm_target: str = DEFAULT_LLM_TARGET
    vault_target: str = DEFAULT_VAULT_TARGET
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    path: Path | None = None
    # Where the token came from, for the hint when it is refused: "RMLLM_TOKEN", "file"
    # (the config file at ``path``), "login" (pasted into ``rmllm login``), or "".
    credential_from: str = ""

    def tls_options(self) -> Tls | None:
        """The client's TLS options, or None for plaintext."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("mTLS needs both RMLLM_TLS_CERT and RMLLM_TLS_KEY (or tls_cert and tls_key)")
        return Tls(
            root_certificates=_pem(self.tls_ca, "CA certificate") if self.tls_ca else None,
            certificate_chain=_pem(self.tls_cert, "client certificate") if self.tls_cert else None,
            private_key=_pem(self.tls_key, "client key") if self.tls_key else None,
        )

    def require_token(self) -> str:
        if not self.token:
            raise ConfigError("no token: set RMLLM_TOKEN or run `rmllm login`")
        return self.token


def load(
    env: Mapping[str, str], *, llm_target: str | None = None, vault_target: str | None = None
) -> CliSettings:
    """Flags, then environment, then the config file, then defaults."""
    path = config_path(env)
    file = read_file(path)

    def pick(env_name: str, file_key: str) -> str | None:
        return env.get(env_name) or file.get(file_key) or None

    credential_from = "RMLLM_TOKEN" if env.get("RMLLM_TOKEN") else "file" if file.get("token") else ""
    return CliSettings(
        credential_from=credential_from,
        llm_target=llm_target or pick("RMLLM_TARGET", "llm_target") or DEFAULT_LLM_TARGET,
        vault_target=vault_target or pick("RMLLM_VAULT_TARGET", "vault_target") or DEFAULT_VAULT_TARGET,
        token=pick("RMLLM_TOKEN", "token"),
        tls=(pick("RMLLM_TLS", "tls") or "").lower() in TRUE,
        tls_ca=pick("RMLLM_TLS_CA", "tls_ca"),
        tls_cert=pick("RMLLM_TLS_CERT", "tls_cert"),
        tls_key=pick("RMLLM_TLS_KEY", "tls_key"),
        path=path,
    )


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def save_token(path: Path, token: str) -> None:
    """Write ``token`` into the config file (mode 0600), keeping its other settings."""
    values = read_file(path)
    values["token"] = token
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = "".join(f"{key} = {toml_string(values[key])}\n" for key in FILE_KEYS if key in values)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
