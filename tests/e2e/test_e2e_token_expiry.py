"""A token made with ``--expires-in`` works until it expires, then both services refuse it.

Issue 13 item 16 through the live path: the operator CLI, the vault and the LLM
service as processes, the Python client. Expiry is reached by moving the token's
stored expiry into the past, as the clock would.
"""

from __future__ import annotations

import time

import pytest
from fakes.harness import KEYS
from testkit.stack import Stack

from clients import Client
from clients import errors as cerr
from vault_service.database import Database


def test_an_expired_token_is_refused_by_both_services(stack: Stack) -> None:
    created = stack.vault_cli("users", "create", "expiring", "--expires-in", "1h")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    listed = stack.vault_cli("tokens", "list", "expiring")
    (line,) = listed.stdout.splitlines()[1:]
    assert line.split()[3] != "never" and line.split()[-1] == "active"

    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        stack.enqueue({"transcript": "openai_basic", "route": "chat"})
        assert client.chat("openai", "Hello").text

        db = Database(f"sqlite:///{stack.data_dir / 'vault.sqlite3'}")
        try:
            model = db.tables.token
            token_id = line.split()[0]
            db.call(
                lambda: (
                    model.update(expire_time=time.time_ns() // 1000 - 1).where(model.id == token_id).execute()
                )
            )
        finally:
            db.close()

        for call in (lambda: client.chat("openai", "Hello"), client.list_configs):
            with pytest.raises(cerr.Unauthenticated) as caught:
                call()
            assert caught.value.reason == "TOKEN_INVALID"
    listed = stack.vault_cli("tokens", "list", "expiring")
    assert listed.stdout.splitlines()[1].split()[-1] == "expired"
