"""A session across operator actions: the vault restarts mid-session (calls fail with
VAULT_UNAVAILABLE, then recover with no data lost), and a revoked token is refused
by every client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from fakes.harness import KEYS
from testkit import grpcurl
from testkit.stack import ROOT, Stack

from clients import Client
from clients import errors as cerr

T = TypeVar("T")


def recovered(call: Callable[[], T], attempts: int = 60) -> T:
    """The first result of ``call`` once the restarted service is reachable again."""
    for _ in range(attempts - 1):
        try:
            return call()
        except cerr.Unavailable:
            time.sleep(0.25)
    return call()


def test_vault_restart_mid_session(stack: Stack, token: str) -> None:
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"), default_model="gpt-4o")
        assert client.chat("openai", "Hello").text

        assert stack.vault.stop() == 0
        with pytest.raises(cerr.VaultUnavailable) as caught:
            client.chat("openai", "Hello", timeout=5)
        assert caught.value.reason == "VAULT_UNAVAILABLE"
        with pytest.raises(cerr.Unavailable):
            client.list_configs(timeout=2)

        stack.restart_vault()
        configs = recovered(client.list_configs)
        assert [(c.provider, c.key_hint, c.settings.default_model) for c in configs] == [
            ("openai", KEYS["openai"][-4:], "gpt-4o")
        ]
        result = recovered(lambda: client.chat("openai", "Hello"))  # the LLM service reconnects too
        assert result.text and result.model
        assert stack.requests()[-1]["json"]["model"] == "gpt-4o"


def test_revoked_token_is_refused_everywhere(stack: Stack) -> None:
    token = stack.create_user("revoked-user")
    listed = stack.vault_cli("tokens", "list", "revoked-user")
    assert listed.returncode == 0, listed.stderr
    (token_id,) = re.findall(r"\btok_[0-9a-f]+\b", listed.stdout)
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        revoked = stack.vault_cli("tokens", "revoke", token_id)
        assert revoked.returncode == 0, revoked.stderr

        for call in (lambda: client.chat("openai", "Hello"), client.list_configs, client.providers):
            with pytest.raises(cerr.Unauthenticated) as caught:
                call()
            assert caught.value.reason == "TOKEN_INVALID"

    cli = subprocess.run(
        [sys.executable, "-m", "clients.cli", "keys", "list"],
        capture_output=True,
        text=True,
        check=False,
        env=stack.client_env(token),
    )
    assert cli.returncode == 4
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr

    body = json.dumps({"provider": "openai", "messages": [{"role": "ROLE_USER", "content": "Hi"}]})
    for address, method, data in (
        (stack.llm.address, "realmultillm.llm.v1.LLMService/Chat", body),
        (stack.vault.address, "realmultillm.vault.v1.VaultService/ListProviderConfigs", "{}"),
    ):
        result = grpcurl.run(address, method, data=data, token=token)
        assert result.returncode != 0
        assert "Unauthenticated" in result.stderr and "TOKEN_INVALID" in result.stderr

    node = subprocess.run(
        ["node", "example.js"],
        cwd=ROOT / "clients" / "node",
        capture_output=True,
        text=True,
        check=False,
        env={**stack.client_env(token), "RMLLM_EXAMPLE_KEY": KEYS["openai"]},
    )
    assert node.returncode == 1
    assert "UNAUTHENTICATED" in node.stderr and "TOKEN_INVALID" in node.stderr
