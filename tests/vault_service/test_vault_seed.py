"""The seed policy and the settings that load it: no default, weak seeds refused, first-run file."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.vault import SEED as SEED_VALUE
from testkit.vault import SERVICE_TOKEN

from rmllm_common import state
from rmllm_common.secret import Secret
from vault_service import accounts, configs, migrations, seed
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.server import build_server
from vault_service.settings import SettingsError, VaultSettings

WEAK = [
    ("", "empty"),
    ("changeme", "well-known"),
    ("default-seed", "well-known"),
    ("my-example-seed-" + "Qk3Lp9Zr7Xw2Vt5Ny8Bm1Hc4", "well-known"),
    ("Tr0ub4dor&3-correct-horse-battery-staple!", "well-known"),
    ("0123456789abcdef" * 3, "decodes to 24 bytes"),  # 48 hex digits
    ("Qk3Lp9Zr7Xw2Vt5Ny8Bm1Hc4Jd6Fg0Sa", "decodes to 24 bytes"),  # 32 base64 characters
    ("a" * 64, "does not look random"),
    ("ab" * 40, "does not look random"),
    ("0123456789abcdef" * 4, "does not look random"),  # 32 bytes of hex, but a repeat
    ("Qk3Lp9Zr7Xw2Vt5Ny8Bm1Hc4 Jd6Fg0SaQk3Lp9Zr7Xw2", "whitespace"),
    # Issue 13 item 7: the three the old estimate accepted.
    ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ", "does not look random"),  # base64, but a sequence
    ("hunter2hunter3hunter4hunter5hunter6hunter7hunter8", "well-known"),
    ("hunter9hunter3hunter4hunter5hunter6hunter7hunter8", "passphrase is not accepted"),
    ("my-company-vault-seed-for-production-2026-v1-abc", "does not look random"),  # base64url, one case
    # Passphrases and printable strings the old estimate also took.
    ("k#8Vq!2rZ@p5Lw^9xT&3mN*7bH$4cJ%6dF(0sG)e", "passphrase is not accepted"),
    ("Zr8Kp2Wq5Xm9Tn4Lv7Bc1Hy6Dj3Gs0Fa-Ne_MuQoPiR+", "passphrase is not accepted"),  # mixed alphabets
]


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_weak_seeds_are_refused_with_a_way_to_make_one(value: str, why: str) -> None:
    with pytest.raises(seed.WeakSeed) as caught:
        seed.check(value)
    message = str(caught.value)
    assert why in message
    assert "secrets.token_urlsafe(32)" in message
    assert not value or value not in message
    if value:
        assert "RMLLM_VAULT_OLD_SEEDS" in message and "rmllm-vault rewrap" in message


@pytest.mark.parametrize(
    "value",
    [
        "q9Xl2mV7tR4pK8sW1zY6bN3cF5hJ0gD-aE_uLoIiQwM",  # token_urlsafe(32): 43 characters
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # token_hex(32)
        "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",  # openssl rand -hex, upper case
        "s3ZqXoVd1u6Yw8Bq4Jx0Tf2Lr9Kc7Hn5Gm1Pa3Ei6Uw=",  # openssl rand -base64 32: padded
        "s3ZqXoVd1u6Yw8Bq4Jx0Tf2Lr9Kc7Hn5Gm1Pa3Ei6Uw+Ab/Cde",  # standard alphabet, 37 bytes
    ],
)
def test_strong_seeds_pass(value: str) -> None:
    seed.check(value)


def test_every_seed_and_credential_the_repository_ships_follows_the_rule() -> None:
    from testkit import llm_harness
    from testkit.vault import OLD_SEED, SEED

    shipped = [SEED, OLD_SEED]
    # Seeds written into other tests' source (Keyring(Secret("..."))) follow the rule too.
    pattern = re.compile(r'(?:new_seed = |Keyring\(Secret\()"([A-Za-z0-9_+/=-]{40,})"')
    for path in Path(__file__).parent.glob("test_*.py"):
        shipped += pattern.findall(path.read_text())
    assert len(shipped) >= 4
    for value in shipped:
        seed.check(value)
    for token in (SERVICE_TOKEN, llm_harness.SERVICE_TOKEN):
        state.check_service_token(token)


@pytest.mark.parametrize(
    "value", ["a" * 32, "rms_" + "a" * 43, "svc-test-credential-0123456789abcdefghijklmnop"]
)
def test_weak_service_credentials_are_refused_by_both_services(value: str, data_dir: Path) -> None:
    """Issue 13 item 14: the credential was only length-checked, so 32 x ``a`` was accepted."""
    from llm_service.settings import LLMSettings
    from llm_service.settings import SettingsError as LLMSettingsError

    env = {"RMLLM_SERVICE_TOKEN": value, "RMLLM_VAULT_SEED": SEED_VALUE}
    with pytest.raises(SettingsError) as vault_error:
        VaultSettings.from_env(env, data_dir=str(data_dir))
    with pytest.raises(LLMSettingsError) as llm_error:
        LLMSettings.from_env(env, data_dir=str(data_dir))
    for caught in (vault_error, llm_error):
        assert "RMLLM_SERVICE_TOKEN" in str(caught.value)
        assert "secrets.token_urlsafe(32)" in str(caught.value)
        assert value not in str(caught.value)


def test_generated_and_hand_made_service_credentials_pass(data_dir: Path) -> None:
    generated = state.new_service_token()
    assert generated.startswith("rms_") and len(generated) == 47
    for value in (generated, "rms_" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"):
        state.check_service_token(value)
    created = VaultSettings.from_env({"RMLLM_VAULT_SEED": SEED_VALUE}, data_dir=str(data_dir))
    assert created.service_token.reveal() == (data_dir / "service_token").read_text().strip()
    (data_dir / "service_token").write_text("a" * 40 + "\n")
    with pytest.raises(SettingsError, match="service credential file"):
        VaultSettings.from_env({"RMLLM_VAULT_SEED": SEED_VALUE}, data_dir=str(data_dir))


@given(st.integers(0, 2**31))
def test_generated_seeds_always_pass(_: int) -> None:
    value = seed.generate()
    assert len(value) == 43
    seed.check(value)


def test_first_start_generates_a_private_seed_and_says_to_back_it_up(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        first = VaultSettings.from_env({}, data_dir=str(data_dir))
    path = data_dir / "vault_seed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.seed.reveal() == path.read_text().strip()
    warning = next(r for r in caplog.records if getattr(r, "event", "") == "seed_generated")
    assert getattr(warning, "path", "") == str(path) and "back" in warning.getMessage()
    assert first.seed.reveal() not in caplog.text
    again = VaultSettings.from_env({}, data_dir=str(data_dir))
    assert again.seed == first.seed


def test_seed_sources_and_refusals(data_dir: Path, tmp_path: Path) -> None:
    strong = seed.generate()
    from_env = VaultSettings.from_env({"RMLLM_VAULT_SEED": strong}, data_dir=str(data_dir))
    assert from_env.seed.reveal() == strong
    assert not (data_dir / "vault_seed").exists()

    seed_file = tmp_path / "seed.txt"
    seed_file.write_text(strong + "\n")
    seed_file.chmod(0o600)
    from_file = VaultSettings.from_env({"RMLLM_VAULT_SEED_FILE": str(seed_file)}, data_dir=str(data_dir))
    assert from_file.seed.reveal() == strong
    seed_file.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        VaultSettings.from_env({"RMLLM_VAULT_SEED_FILE": str(seed_file)}, data_dir=str(data_dir))
    with pytest.raises(SettingsError, match="does not exist"):
        VaultSettings.from_env({"RMLLM_VAULT_SEED_FILE": str(tmp_path / "nope")}, data_dir=str(data_dir))
    with pytest.raises(SettingsError, match="RMLLM_VAULT_SEED is a well-known"):
        VaultSettings.from_env({"RMLLM_VAULT_SEED": "changeme"}, data_dir=str(data_dir))
    with pytest.raises(SettingsError, match=r"RMLLM_VAULT_OLD_SEEDS\[1\] is too weak"):
        VaultSettings.from_env(
            {"RMLLM_VAULT_SEED": strong, "RMLLM_VAULT_OLD_SEEDS": f"{seed.generate()}, short1234"},
            data_dir=str(data_dir),
        )
    # A seed that an earlier version accepted (a printable passphrase of ~256 bits) is
    # refused as the current seed but still decrypts as an old one, so it can be rotated out.
    legacy = "k#8Vq!2rZ@p5Lw^9xT&3mN*7bH$4cJ%6dF(0sG)e"
    with pytest.raises(SettingsError, match="passphrase is not accepted"):
        VaultSettings.from_env({"RMLLM_VAULT_SEED": legacy}, data_dir=str(data_dir))
    rotated = VaultSettings.from_env(
        {"RMLLM_VAULT_SEED": strong, "RMLLM_VAULT_OLD_SEEDS": f" {seed.generate()} ,{legacy},"},
        data_dir=str(data_dir),
    )
    assert len(rotated.old_seeds) == 2
    assert Keyring(rotated.seed, rotated.old_seeds).key_ids[2] == Keyring(Secret(legacy)).current.key_id


def test_operator_commands_without_secrets_do_not_create_them(data_dir: Path) -> None:
    settings = VaultSettings.from_env(
        {"RMLLM_DATABASE_URL": "sqlite:////x/y.db"}, data_dir=str(data_dir), with_secrets=False
    )
    assert settings.effective_database_url == "sqlite:////x/y.db"
    assert not (data_dir / "vault_seed").exists() and not (data_dir / "service_token").exists()
    assert VaultSettings.from_env({}, data_dir=str(data_dir), with_secrets=False).effective_database_url == (
        f"sqlite:///{data_dir / 'vault.sqlite3'}"
    )


def _database_with_a_key_and_no_seed(data_dir: Path, env: dict[str, str]) -> tuple[VaultSettings, Keyring]:
    """A first start's settings and keyring, one stored key, and then the seed file lost."""
    first = VaultSettings.from_env(env, data_dir=str(data_dir), listen="127.0.0.1:0")
    assert first.generated_seed_file == data_dir / "vault_seed"
    db = Database(first.effective_database_url)
    migrations.migrate(db)
    principal, _, _ = db.call(accounts.create_user, db, "alice")
    keyring = Keyring(first.seed)
    key = Secret("sk-kept-safe-0001")
    draft = configs.Draft(
        keyring.encrypt(key, principal.user_id, "openai"), keyring.current.key_id, "", "", configs.Settings()
    )
    db.call(configs.put, db, principal.user_id, "openai", draft, "r")
    db.close()
    (data_dir / "vault_seed").unlink()  # the operator lost the seed file
    return first, keyring


def test_workers_supervisor_refuses_a_lost_seed_too(data_dir: Path) -> None:
    env = {"RMLLM_SERVICE_TOKEN": SERVICE_TOKEN}
    _, keyring = _database_with_a_key_and_no_seed(data_dir, env)
    result = subprocess.run(
        [sys.executable, "-m", "vault_service.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "2"],
        env={**os.environ, **env, "RMLLM_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"1 under key id {keyring.current.key_id}" in result.stderr
    assert "serving" not in result.stderr
    assert not (data_dir / "vault_seed").exists()


async def test_a_lost_seed_is_not_silently_replaced(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"RMLLM_SERVICE_TOKEN": SERVICE_TOKEN}
    first, keyring = _database_with_a_key_and_no_seed(data_dir, env)
    second = VaultSettings.from_env(env, data_dir=str(data_dir), listen="127.0.0.1:0")
    with pytest.raises(SettingsError, match=f"1 under key id {keyring.current.key_id}"):
        await build_server(second)
    assert not (data_dir / "vault_seed").exists()  # the useless new seed is not kept

    with caplog.at_level(logging.ERROR):
        other = await build_server(dataclasses.replace(second, generated_seed_file=None))
    await other.stop(0)
    assert any(getattr(r, "event", "") == "unknown_key_ids" for r in caplog.records)
    restored = await build_server(dataclasses.replace(second, seed=first.seed, generated_seed_file=None))
    await restored.stop(0)
    with pytest.raises(SettingsError, match="no seed is configured"):
        VaultSettings.from_env(env, data_dir=str(data_dir), generate_seed=False)
