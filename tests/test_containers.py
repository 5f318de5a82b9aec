"""Docker cannot run here, so the compose file and Dockerfile are checked against the
code: every command, subcommand, flag, variable and port they use must exist."""

from __future__ import annotations

import argparse
import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PACKAGES = ("rmllm_common", "vault_service", "llm_service")


def source_text() -> str:
    return "\n".join(p.read_text() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def subcommands(script: str) -> dict[str, argparse.ArgumentParser]:
    module = importlib.import_module(SCRIPTS[script].split(":")[0])
    top: argparse.ArgumentParser = module.parser()
    actions = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def option_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_commands_and_flags_exist() -> None:
    for name in ("vault", "llm"):
        command: list[str] = COMPOSE["services"][name]["command"]
        assert command[0] in SCRIPTS, f"{name}: {command[0]} is not a console script"
        sub = subcommands(command[0])
        assert command[1] in sub
        known = {opt for action in sub[command[1]]._actions for opt in action.option_strings}
        for token in command[2:]:
            if token.startswith("--"):
                assert token in known, f"{name}: {token} is not a flag of {command[0]} {command[1]}"


def test_ports_match_listen_addresses_and_defaults() -> None:
    defaults = {
        "vault": importlib.import_module("vault_service.settings").DEFAULT_LISTEN,
        "llm": importlib.import_module("llm_service.settings").DEFAULT_LISTEN,
    }
    for name, default in defaults.items():
        service: dict[str, Any] = COMPOSE["services"][name]
        port = port_of(option_value(service["command"], "--listen"))
        assert port == port_of(default)
        published = {int(p.rsplit(":", 2)[-1]) for p in service["ports"]}
        assert published == {port}
        health = service["healthcheck"]["test"]
        assert health[1:4] == ["python", "-m", "rmllm_common.healthcheck"]
        importlib.import_module("rmllm_common.healthcheck")
        assert port_of(health[4]) == port
    vault_addr = COMPOSE["services"]["llm"]["environment"]["RMLLM_VAULT_ADDR"]
    assert vault_addr.split(":")[0] == "vault"
    assert port_of(vault_addr) == port_of(defaults["vault"])


def test_every_variable_is_read_by_the_code() -> None:
    code = source_text()
    for name in ("vault", "llm"):
        for variable in COMPOSE["services"][name]["environment"]:
            assert f'"{variable}"' in code, f"{name}: {variable} is not read anywhere in the code"


def test_stack_shape() -> None:
    services = COMPOSE["services"]
    assert services["llm"]["depends_on"]["vault"]["condition"] == "service_healthy"
    data_dir = services["vault"]["environment"]["RMLLM_DATA_DIR"]
    assert any(v.endswith(f":{data_dir}") for v in services["vault"]["volumes"])
    assert services["postgres"]["profiles"] == ["postgres", "scale"]
    assert "RMLLM_VAULT_SEED_FILE" in services["vault"]["environment"]
    assert "vault_seed" not in services["llm"].get("secrets", []), "the LLM service must never see the seed"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_the_scale_profile_runs_two_llm_replicas_on_redis_and_one_vault() -> None:
    services = COMPOSE["services"]
    scale = {name for name, service in services.items() if "scale" in service.get("profiles", ())}
    assert scale == {"llm-2", "redis", "postgres"}
    first, second = services["llm"], services["llm-2"]
    assert second["command"] == first["command"]
    assert set(second["environment"]) == set(first["environment"])
    assert second["environment"]["RMLLM_REDIS_URL"].endswith("redis://redis:6379/0}")
    assert "RMLLM_REDIS_URL" in first["environment"]
    assert second["depends_on"]["redis"]["condition"] == "service_healthy"
    assert second["depends_on"]["vault"]["condition"] == "service_healthy"
    host_ports = {p.rsplit(":", 2)[-2] for s in (first, second) for p in s["ports"]}
    assert len(host_ports) == 2  # each replica published on its own host port
    assert "vault_seed" not in second.get("secrets", [])
    for variable in second["environment"]:
        assert f'"{variable}"' in source_text(), variable


def test_dockerfile_uses_the_same_commands() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == COMPOSE["services"]["llm"]["command"]
    for package in (*PACKAGES, "clients", "gen"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    variables = set(re.findall(r'"(RMLLM_[A-Z0-9_]+)"', source_text()))
    missing = sorted(v for v in variables if v not in readme)
    assert not missing, f"README's configuration table lacks {missing}"


def test_the_vault_waits_for_postgres_when_its_profile_is_on() -> None:
    services = COMPOSE["services"]
    database = services["postgres"]
    assert database["profiles"] == ["postgres"] and "healthcheck" in database
    # The header's PostgreSQL URL names the postgres service, so the vault must wait for it,
    # and only when the profile is active (required: false, Compose v2.20+).
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:", 1)[0]
    url = re.search(r"RMLLM_DATABASE_URL=(postgresql://\S+)", header)
    assert url is not None and "@postgres:5432/" in url.group(1)
    assert services["vault"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    assert "postgres" not in services["llm"].get("depends_on", {}), "the LLM service never talks to postgres"


def test_compose_v2_is_stated_where_the_file_needs_it() -> None:
    assert COMPOSE["name"], "the file uses the top-level name:, which Compose v1 rejects"
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:", 1)[0]
    readme = (ROOT / "README.md").read_text()
    for text in (header, readme):
        assert "Compose v2.20" in text and "docker-compose" in text
