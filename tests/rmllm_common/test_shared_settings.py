"""Both services read a shared variable through one parser: same values, same meaning, same error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_service import settings as llm_settings
from llm_service.settings import LLMSettings
from rmllm_common import settings as shared
from vault_service import settings as vault_settings
from vault_service.settings import VaultSettings

TOKEN = "rms_JrlWV_yCtHiYNfpdWmKo5eWQLOzQhJUT5CXSFso7iDQ"  # random, as generated


def read_both(tmp_path: Path, env: dict[str, str]) -> tuple[Any, Any]:
    """Each service's settings from one environment (the vault without its secrets)."""
    full = {"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_DATA_DIR": str(tmp_path), **env}
    return LLMSettings.from_env(full), VaultSettings.from_env(full, with_secrets=False)


def test_one_settings_error_class() -> None:
    assert llm_settings.SettingsError is vault_settings.SettingsError is shared.SettingsError


@pytest.mark.parametrize(
    ("raw", "on"),
    [(raw, True) for raw in ("1", "true", "TRUE", "yes", "on")]
    + [(raw, False) for raw in ("", "0", "false", "no", "off")],
)
def test_allow_custom_base_url_means_the_same_in_both(tmp_path: Path, raw: str, on: bool) -> None:
    llm, vault = read_both(tmp_path, {"RMLLM_ALLOW_CUSTOM_BASE_URL": raw})
    assert llm.allow_custom_base_url is vault.allow_custom_base_url is on


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RMLLM_ALLOW_CUSTOM_BASE_URL", "maybe"),
        ("RMLLM_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("RMLLM_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("RMLLM_LOG_LEVEL", "loud"),
        ("RMLLM_WORKERS", "0"),
        ("RMLLM_WORKERS", "many"),
    ],
)
def test_a_bad_shared_value_is_refused_by_both_with_one_message(tmp_path: Path, name: str, raw: str) -> None:
    env = {"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_DATA_DIR": str(tmp_path), name: raw}
    with pytest.raises(shared.SettingsError) as from_llm:
        LLMSettings.from_env(env)
    with pytest.raises(shared.SettingsError) as from_vault:
        VaultSettings.from_env(env, with_secrets=False)
    assert str(from_llm.value) == str(from_vault.value)
    assert name in str(from_llm.value)


def test_workers_and_log_level_go_through_the_settings_objects(tmp_path: Path) -> None:
    llm, vault = read_both(tmp_path, {"RMLLM_WORKERS": "3", "RMLLM_LOG_LEVEL": "WARNING"})
    assert (llm.workers, llm.log_level) == (vault.workers, vault.log_level) == (3, "warning")
    # The flags win over the environment.
    env = {"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_DATA_DIR": str(tmp_path), "RMLLM_WORKERS": "3"}
    assert LLMSettings.from_env(env, workers=2, log_level="debug").workers == 2
    assert VaultSettings.from_env(env, with_secrets=False, workers=1, log_level="error").log_level == "error"
    with pytest.raises(shared.SettingsError, match="--workers"):
        VaultSettings.from_env(env, with_secrets=False, workers=0)


def test_service_credential_rules_are_the_same(tmp_path: Path) -> None:
    env = {
        "RMLLM_DATA_DIR": str(tmp_path),
        "RMLLM_VAULT_SEED": "x",
        "RMLLM_SERVICE_TOKEN": "t" * 20 + " " + "t" * 20,
    }
    for read in (
        lambda: LLMSettings.from_env(env),
        lambda: VaultSettings.from_env(env),
    ):
        with pytest.raises(shared.SettingsError, match="RMLLM_SERVICE_TOKEN"):
            read()
