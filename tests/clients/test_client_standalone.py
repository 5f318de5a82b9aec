"""The client package stands alone: importing it loads none of the servers' code."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from clients import AsyncChatStream, AsyncClient, ChatStream, Client

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import clients, clients.aio, clients.cli, clients.sync
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'rmllm_common', 'vault_service', 'llm_service'})
print(','.join(loaded))
"""


def test_clients_import_no_server_package() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "\n"


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_sync_and_asyncio_clients_offer_the_same_calls() -> None:
    sync, aio = public_methods(Client), public_methods(AsyncClient)
    assert set(sync) == set(aio)
    assert {"chat", "stream_chat", "test_key", "put_config", "update_config"} <= set(sync)
    for name, signature in sync.items():
        assert signature.parameters == aio[name].parameters, name
    # Both streams: cancel(); the asyncio one adds `await final()` (its result cannot block).
    assert set(public_methods(AsyncChatStream)) - set(public_methods(ChatStream)) == {"final"}
