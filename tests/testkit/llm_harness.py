"""An in-process LLM server wired to a fake vault and a scripted adapter, on port 0.

``llm_harness()`` starts a ``FakeVault`` (users alice and bob; alice has OpenAI and
Anthropic keys), builds the real LLM server with ``build_server`` and the scripted
adapter injected, and opens a client channel. Retry waits go through a recording
``sleep`` that does not sleep, so tests read the waits instead of timing them.
``rich_error`` parses a failed call's google.rpc.Status: code, the one ErrorInfo,
RetryInfo and BadRequest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.credential_cache import CredentialCache
from llm_service.server import build_server
from llm_service.settings import LLMSettings
from rmllm_common.server import ServerHandle
from testkit.llm_fake_vault import FakeVault, StoredKey
from testkit.llm_scripted import ScriptedAdapter

SERVICE_TOKEN = "rms_qsRsrfIAoQvPJZyyQOqOrtRNUNYMrpZmgFNeJYmsLfQ"  # random, as generated


def user_token(label: str) -> str:
    """A well-formed user token (``rmk_`` and 43 characters) starting with ``label``."""
    return "rmk_" + label.ljust(43, "0")


ALICE = user_token("alice_token")
BOB = user_token("bob_token")
ALICE_OPENAI_KEY = "sk-alice-PLANTED-openai-key-7a1c"
ALICE_ANTHROPIC_KEY = "sk-ant-alice-PLANTED-anthropic-9f2e"


# Call metadata no service may accept as a bearer token, by what is wrong with it.
BAD_BEARERS: dict[str, tuple[tuple[str, str], ...]] = {
    "missing": (),
    "not-bearer": (("authorization", "Basic abc"),),
    "empty": (("authorization", "Bearer "),),
    "spaces": (("authorization", "Bearer a b"),),
}


def auth(token: str = ALICE) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a user token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class RichError:
    """What a caller can read from a failed call."""

    code: grpc.StatusCode
    message: str
    reasons: list[str]
    metadata: dict[str, str]
    retry_delay: float | None
    violations: list[tuple[str, str]]

    @property
    def reason(self) -> str:
        assert len(self.reasons) == 1, self.reasons
        return self.reasons[0]


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Parse the google.rpc.Status of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reasons: list[str] = []
    metadata: dict[str, str] = {}
    retry: float | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "realmultillm"
            reasons.append(info.reason)
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_r = error_details_pb2.RetryInfo()
            detail.Unpack(info_r)
            retry = info_r.retry_delay.seconds + info_r.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return RichError(error.code(), error.details() or "", reasons, metadata, retry, violations)


@dataclass
class LLMHarness:
    """A running LLM server, its fake vault, its scripted adapter and a client stub."""

    handle: ServerHandle
    vault: FakeVault
    adapter: ScriptedAdapter
    channel: grpc.aio.Channel
    stub: Any
    sleeps: list[float] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    @property
    def cache(self) -> CredentialCache:
        """The LLM server's credential cache."""
        vault = getattr(self.handle, "vault", None)
        assert vault is not None
        cache: CredentialCache = vault.cache
        return cache

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)


def chat_request(text: str = "Hi", provider: str = "openai", **fields: Any) -> llm_pb2.ChatRequest:
    """A minimal valid ChatRequest."""
    return llm_pb2.ChatRequest(
        provider=provider, messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=text)], **fields
    )


def stream_request(text: str = "Hi", provider: str = "openai", **fields: Any) -> llm_pb2.StreamChatRequest:
    """A minimal valid StreamChatRequest."""
    return llm_pb2.StreamChatRequest(
        provider=provider, messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=text)], **fields
    )


@asynccontextmanager
async def llm_harness(
    env: Mapping[str, str] | None = None,
    *,
    adapter: ScriptedAdapter | None = None,
    vault_addr: str | None = None,
    real_adapters: bool = False,
    **build: Any,
) -> AsyncIterator[LLMHarness]:
    """Start a fake vault and an LLM server (settings from ``env``) wired to it.

    ``real_adapters``: the wire-format adapters talk HTTP (to a fake provider) instead
    of the scripted adapter answering.
    """
    vault = FakeVault(SERVICE_TOKEN, users={ALICE: "u-alice", BOB: "u-bob"})  # type: ignore[abstract]
    vault.keys[("u-alice", "openai")] = StoredKey(ALICE_OPENAI_KEY)
    vault.keys[("u-alice", "anthropic")] = StoredKey(ALICE_ANTHROPIC_KEY, default_model="claude-haiku-4-5")
    address = await vault.start()
    adapter = adapter or ScriptedAdapter()
    sleeps: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
            "RMLLM_VAULT_ADDR": vault_addr or address,
            "RMLLM_RETRY_BASE_DELAY_SECONDS": "0.5",
            # The fake vault's canned keys change under some tests without an
            # invalidation: cache only where a test asks for it.
            "RMLLM_CREDENTIAL_CACHE_SECONDS": "0",
            **(env or {}),
        },
        listen="127.0.0.1:0",
    )
    build.setdefault("sleep", recording_sleep)
    scripted = adapter
    handle = await build_server(
        settings, adapters=None if real_adapters else (lambda spec, base_url: scripted), **build
    )
    await handle.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}")
    try:
        yield LLMHarness(handle, vault, adapter, channel, llm_pb2_grpc.LLMServiceStub(channel), sleeps)
    finally:
        await channel.close()
        await handle.stop(0.5)
        await vault.stop()
