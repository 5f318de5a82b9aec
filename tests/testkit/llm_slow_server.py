"""A real LLM server process whose provider answers slowly: for SIGTERM drain tests.

Run as ``python -m testkit.llm_slow_server`` (with ``tests`` on PYTHONPATH). It
starts a fake vault and the real LLM server (``build_server`` + ``ServerHandle.serve``,
the same run loop as ``rmllm-llm serve``) with a scripted adapter that sends one
delta, waits ``RMLLM_TEST_SLOW_SECONDS`` (default 1), then finishes. It logs the
usual ``serving`` line, so ``testkit.procs.start`` learns its port.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp

from llm_service.adapters.base import ChatEvent, ChatParams, Endpoint, TextDelta
from llm_service.server import build_server
from llm_service.settings import LLMSettings
from rmllm_common import logs
from testkit.llm_fake_vault import FakeVault, StoredKey
from testkit.llm_harness import ALICE, ALICE_OPENAI_KEY, SERVICE_TOKEN
from testkit.llm_scripted import ScriptedAdapter, finished


class SlowAdapter(ScriptedAdapter):
    """One delta, a pause, the rest."""

    async def stream_chat(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, params: ChatParams, timeout: float | None
    ) -> AsyncIterator[ChatEvent]:
        yield TextDelta("slow")
        await asyncio.sleep(float(os.environ.get("RMLLM_TEST_SLOW_SECONDS", "1")))
        yield TextDelta(" answer")
        yield finished()


async def main() -> None:
    logs.configure("info")
    vault = FakeVault(SERVICE_TOKEN, users={ALICE: "u-alice"})  # type: ignore[abstract]
    vault.keys[("u-alice", "openai")] = StoredKey(ALICE_OPENAI_KEY)
    address = await vault.start()
    settings = LLMSettings.from_env(
        {**os.environ, "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN, "RMLLM_VAULT_ADDR": address},
        listen="127.0.0.1:0",
    )
    adapter = SlowAdapter()
    handle = await build_server(settings, adapters=lambda spec, base_url: adapter)
    await handle.serve(f"127.0.0.1:{handle.port}", settings.grace_seconds)
    await vault.stop()


if __name__ == "__main__":
    asyncio.run(main())
