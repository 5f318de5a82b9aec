"""The environment parsers both services' settings use, and the one ``SettingsError``.

``LLMSettings`` and ``VaultSettings`` read every ``RMLLM_*`` variable through these
functions, so a variable both services read (``RMLLM_ALLOW_CUSTOM_BASE_URL``,
``RMLLM_SHUTDOWN_GRACE_SECONDS``, ``RMLLM_LOG_LEVEL``, ``RMLLM_WORKERS``, the
service credential) means the same in both, and a bad value gets the same message
naming the variable and what it accepts.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

from rmllm_common import randomsecret, state
from rmllm_common.secret import Secret
from rmllm_common.workers import default_workers

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_WORKERS = 256
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_TARGET_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class SettingsError(ValueError):
    """A configuration problem, with a message saying how to fix it."""


def number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A finite number from ``low`` to ``high`` (``default`` when unset or empty)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number from {low:g} to {high:g}, not {raw[:40]!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"{name} must be a number from {low:g} to {high:g}, not {raw[:40]!r}")
    return value


def integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (``default`` when unset or empty)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


def flag(env: Mapping[str, str], name: str) -> bool:
    """On for 1/true/yes/on, off for 0/false/no/off or unset (any case); anything else is an error."""
    raw = env.get(name, "").strip().lower()
    if raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    raise SettingsError(f"{name} must be 1 (on) or 0 (off), not {raw[:40]!r}")


def check_address(name: str, value: str, *, targets: bool = False) -> str:
    """``HOST:PORT`` (IPv6 in brackets) or a ``unix:`` path, else a SettingsError.

    With ``targets``, gRPC name-resolver targets (``dns:///vault:50052``) are accepted too.
    """
    schemes = _TARGET_SCHEMES if targets else ("unix:",)
    if any(value.startswith(s) and len(value) > len(s) for s in schemes):
        return value
    match = _ADDRESS.match(value)
    if not match or int(match.group(2)) > 65535:
        raise SettingsError(f"{name} must be HOST:PORT (for example 127.0.0.1:50052), not {value[:80]!r}")
    return value


def log_level(env: Mapping[str, str], given: str | None = None) -> str:
    """``--log-level``, else ``RMLLM_LOG_LEVEL``, else info."""
    level = (given or env.get("RMLLM_LOG_LEVEL") or "info").strip().lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"RMLLM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {level[:20]!r}")
    return level


def workers(env: Mapping[str, str], given: int | None = None) -> int:
    """``--workers``, else ``RMLLM_WORKERS``, else the number of cores this process may use."""
    if given is not None:
        if not 1 <= given <= MAX_WORKERS:
            raise SettingsError(f"--workers must be from 1 to {MAX_WORKERS}, not {given}")
        return given
    return integer(env, "RMLLM_WORKERS", default_workers(), 1, MAX_WORKERS)


def service_credential(env: Mapping[str, str], directory: Path) -> Secret:
    """The service credential (``RMLLM_SERVICE_TOKEN``, its file, else the shared one, made on first run).

    Refused unless it is 32+ random bytes as hex or base64, ``rms_`` prefix optional:
    the seed's rule (``rmllm_common.randomsecret``), checked by ``state.service_token``.
    """
    try:
        token, created = state.service_token(env, directory)
    except randomsecret.WeakSecret as exc:
        raise SettingsError(str(exc)) from None
    if created:
        log.info(
            "generated the service credential", extra={"path": str(directory / state.SERVICE_TOKEN_FILE)}
        )
    return Secret(token)
