"""The asyncio Python client for RealMultiLLM (LLM service and vault), on ``grpc.aio``.

Example::

    from clients import AsyncClient

    async with AsyncClient(token="rmk_...") as client:
        result = await client.chat("anthropic", "Say hi", max_tokens=50)
        print(result.text, result.usage.total_tokens)

        async with client.stream_chat("openai", "Tell a story") as stream:
            async for delta in stream:                 # str pieces as they arrive
                print(delta, end="", flush=True)
        print(stream.result.finish_reason)             # or: result = await stream.final()

The same methods, arguments, results and typed errors as ``clients.sync.Client``;
every method is a coroutine except ``stream_chat``, which returns an
``AsyncChatStream`` at once (not a coroutine: no ``await``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from realmultillm.llm.v1 import llm_pb2

from clients import calls
from clients.calls import Call
from clients.channels import aio_channel
from clients.core import ChatStreamCore, ClientCore
from clients.datatypes import ChatResult, Message, ModelList, ProviderConfig, ProviderInfo, TestKeyResult
from clients.usage import UsagePage, UsageSummary

R = TypeVar("R")


class AsyncChatStream(ChatStreamCore):
    """A running StreamChat: ``async for`` its ``str`` deltas, then read ``result``.

    ``result`` is available once the stream is finished (else ``RuntimeError``);
    ``await final()`` reads the rest and returns it. ``cancel()`` (or leaving an
    ``async with`` block early) cancels the RPC: iteration stops and ``final()``
    raises ``Cancelled``. A stream ending without its final message raises
    ``UpstreamStreamTruncated``.
    """

    def __init__(self, call: Any, target: str) -> None:
        super().__init__(call, target)
        self._responses: AsyncIterator[llm_pb2.StreamChatResponse] = call.__aiter__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        while True:  # reasoning and tool-call pieces are kept by _read, not iterated
            if self._over:
                raise StopAsyncIteration
            try:
                delta = self._read(await anext(self._responses, None))
            except grpc.aio.AioRpcError as exc:
                self._raise_unless_cancelled(exc)
                delta = None
            except asyncio.CancelledError:
                if not self._cancelled:  # else cancel() came from another task while this one read
                    raise
                delta = None
            if delta is None:
                raise StopAsyncIteration
            if delta:
                return delta

    @property
    def result(self) -> ChatResult:
        """The completion, once the stream is finished."""
        if self._result is None and not self._cancelled:
            raise RuntimeError("the stream is not finished: iterate it to the end or await final()")
        return self._finished()

    async def final(self) -> ChatResult:
        """Read the rest of the stream and return the completion."""
        async for _ in self:
            pass
        return self.result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncClient(ClientCore[grpc.aio.Channel]):
    """Asyncio client for both services; see the module docstring for an example."""

    def _channel(self, target: str) -> grpc.aio.Channel:
        return aio_channel(self.options, target)

    async def close(self) -> None:
        """Close both channels."""
        await self._llm_channel.close()
        await self._vault_channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, call: Call[R]) -> R:
        try:
            response = await self._start(call)
        except grpc.aio.AioRpcError as exc:
            raise self._error(call, exc) from exc
        return call.result(response)

    # LLM service

    async def chat(
        self, provider: str, prompt: str | Sequence[Message], **options: Unpack[calls.ChatOptions]
    ) -> ChatResult:
        """One completion (arguments and options as ``Client.chat``)."""
        return await self._run(self._calls.chat(provider, prompt, options))

    def stream_chat(
        self, provider: str, prompt: str | Sequence[Message], **options: Unpack[calls.ChatOptions]
    ) -> AsyncChatStream:
        """The completion as an ``AsyncChatStream`` (not a coroutine: no ``await``)."""
        call = self._calls.stream_chat(provider, prompt, options)
        return AsyncChatStream(self._start(call), self.options.llm_target)

    async def test_key(
        self, provider: str, api_key: str | None = None, **options: Unpack[calls.TestKeyOptions]
    ) -> TestKeyResult:
        """Check ``api_key`` (or, when None, the stored key); options ``base_url``, ``timeout``."""
        return await self._run(self._calls.test_key(provider, api_key, options))

    async def providers(self, *, timeout: float | None = None) -> list[ProviderInfo]:
        """The provider registry, ordered by id."""
        return await self._run(self._calls.providers(timeout))

    async def models(self, provider: str, *, timeout: float | None = None) -> ModelList:
        """The models available to the caller for ``provider``."""
        return await self._run(self._calls.models(provider, timeout))

    # Vault

    async def put_config(
        self, provider: str, api_key: str, **options: Unpack[calls.PutOptions]
    ) -> ProviderConfig:
        """Store (create or replace) the key and settings (options as ``Client.put_config``)."""
        return await self._run(self._calls.put_config(provider, api_key, options))

    async def get_config(self, provider: str, *, timeout: float | None = None) -> ProviderConfig:
        """The stored configuration for ``provider`` (``ConfigNotFound`` when none)."""
        return await self._run(self._calls.get_config(provider, timeout))

    async def list_configs(self, *, timeout: float | None = None) -> list[ProviderConfig]:
        """All of the caller's configurations, ordered by provider."""
        return await self._run(self._calls.list_configs(timeout))

    async def update_config(self, provider: str, **options: Unpack[calls.UpdateOptions]) -> ProviderConfig:
        """Change only the fields given (as ``Client.update_config``); never the key."""
        return await self._run(self._calls.update_config(provider, options))

    async def delete_config(self, provider: str, *, timeout: float | None = None) -> str:
        """Remove the key and configuration; returns the canonical provider id."""
        return await self._run(self._calls.delete_config(provider, timeout))

    # The caller's own usage (vault)

    async def usage_summary(
        self, since: datetime, until: datetime | None = None, **options: Unpack[calls.UsageSummaryOptions]
    ) -> UsageSummary:
        """Totals, and usage by UTC day, provider and model, over ``[since, until)`` (default: now).

        Options: ``provider`` (one only; "" for all) and ``timeout``.
        """
        return await self._run(self._calls.usage_summary(since, until, options))

    async def usage_records(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        **options: Unpack[calls.UsageRecordsOptions],
    ) -> UsagePage:
        """One page of the caller's usage records, newest first (pass ``next_page_token`` on).

        Options: ``provider``, ``page_size`` (default 100), ``page_token`` and ``timeout``.
        """
        return await self._run(self._calls.usage_records(since, until, options))
