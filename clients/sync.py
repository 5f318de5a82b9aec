"""The blocking Python client for RealMultiLLM (LLM service and vault).

Example::

    from clients import Client

    with Client(token="rmk_...") as client:              # 127.0.0.1:50051 and :50052
        client.put_config("openai", api_key=read_key())  # stored encrypted by the vault
        print(client.chat("openai", "Say hi").text)

        with client.stream_chat("openai", "Tell a story", max_tokens=200) as stream:
            for delta in stream:                          # str pieces as they arrive
                print(delta, end="", flush=True)
        print(stream.result.finish_reason, stream.result.usage.cost_usd)

Every call has a deadline (``timeout`` seconds, ``chat_timeout`` for chats; each
method takes ``timeout=`` to override it) and raises a typed
``clients.errors.RmllmClientError`` on failure. Results are the dataclasses of
``clients.datatypes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar, Unpack

import grpc

from clients import calls
from clients.calls import Call
from clients.channels import sync_channel
from clients.core import ChatStreamCore, ClientCore
from clients.datatypes import ChatResult, Message, ModelList, ProviderConfig, ProviderInfo, TestKeyResult
from clients.usage import UsagePage, UsageSummary

R = TypeVar("R")


class ChatStream(ChatStreamCore):
    """A running StreamChat: iterate it for ``str`` deltas, then read ``result``.

    ``text`` holds the deltas received so far. ``result`` (a ``ChatResult``) reads
    the rest of the stream if needed. A stream that ends without its final message
    raises ``UpstreamStreamTruncated``; any error status raises its typed error.
    ``cancel()`` (or leaving a ``with`` block early) cancels the RPC: iteration then
    stops, and ``result`` raises ``Cancelled``.
    """

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:  # reasoning and tool-call pieces are kept by _read, not iterated
            if self._over:
                raise StopIteration
            try:
                delta = self._read(next(self._call, None))
            except grpc.RpcError as exc:
                self._raise_unless_cancelled(exc)
                delta = None
            if delta is None:
                raise StopIteration
            if delta:
                return delta

    @property
    def result(self) -> ChatResult:
        """The completion (text, finish reason, usage); reads the rest of the stream first."""
        for _ in self:
            pass
        return self._finished()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Client(ClientCore[grpc.Channel]):
    """Blocking client for both services; see the module docstring for an example.

    Arguments: ``token``, and by keyword ``llm_target``, ``vault_target``, ``tls``,
    ``timeout``, ``chat_timeout`` and ``channel_options`` (see ``ClientCore``).
    """

    def _channel(self, target: str) -> grpc.Channel:
        return sync_channel(self.options, target)

    def close(self) -> None:
        """Close both channels."""
        self._llm_channel.close()
        self._vault_channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, call: Call[R]) -> R:
        try:
            response = self._start(call)
        except grpc.RpcError as exc:
            raise self._error(call, exc) from exc
        return call.result(response)

    # LLM service

    def chat(
        self, provider: str, prompt: str | Sequence[Message], **options: Unpack[calls.ChatOptions]
    ) -> ChatResult:
        """One completion. ``prompt`` is a user message or a list of ``Message``.

        Options: ``model``, ``system``, ``temperature``, ``max_tokens``, ``top_p``,
        ``stop``, ``tools`` (``Tool``\\ s or plain functions), ``tool_choice``,
        ``parallel_tool_calls``, ``response_format``, ``reasoning`` (unset ones take
        the server's defaults) and ``timeout``.
        """
        return self._run(self._calls.chat(provider, prompt, options))

    def stream_chat(
        self, provider: str, prompt: str | Sequence[Message], **options: Unpack[calls.ChatOptions]
    ) -> ChatStream:
        """The completion as a ``ChatStream`` of text deltas, then ``.result`` (options as ``chat``)."""
        return ChatStream(
            self._start(self._calls.stream_chat(provider, prompt, options)), self.options.llm_target
        )

    def test_key(
        self, provider: str, api_key: str | None = None, **options: Unpack[calls.TestKeyOptions]
    ) -> TestKeyResult:
        """Check ``api_key`` (or, when None, the stored key); options ``base_url``, ``timeout``."""
        return self._run(self._calls.test_key(provider, api_key, options))

    def providers(self, *, timeout: float | None = None) -> list[ProviderInfo]:
        """The provider registry, ordered by id."""
        return self._run(self._calls.providers(timeout))

    def models(self, provider: str, *, timeout: float | None = None) -> ModelList:
        """The models available to the caller for ``provider``."""
        return self._run(self._calls.models(provider, timeout))

    # Vault

    def put_config(self, provider: str, api_key: str, **options: Unpack[calls.PutOptions]) -> ProviderConfig:
        """Store (create or replace) the key and settings for ``provider``.

        Options: ``base_url``, ``default_model``, ``temperature``, ``max_tokens``, ``timeout``.
        """
        return self._run(self._calls.put_config(provider, api_key, options))

    def get_config(self, provider: str, *, timeout: float | None = None) -> ProviderConfig:
        """The stored configuration for ``provider`` (``ConfigNotFound`` when none)."""
        return self._run(self._calls.get_config(provider, timeout))

    def list_configs(self, *, timeout: float | None = None) -> list[ProviderConfig]:
        """All of the caller's configurations, ordered by provider."""
        return self._run(self._calls.list_configs(timeout))

    def update_config(self, provider: str, **options: Unpack[calls.UpdateOptions]) -> ProviderConfig:
        """Change only the fields given (``None`` clears temperature/max_tokens); never the key.

        Fields: ``base_url``, ``is_active``, ``default_model``, ``temperature``,
        ``max_tokens``; and ``timeout``.
        """
        return self._run(self._calls.update_config(provider, options))

    def delete_config(self, provider: str, *, timeout: float | None = None) -> str:
        """Remove the key and configuration; returns the canonical provider id."""
        return self._run(self._calls.delete_config(provider, timeout))

    # The caller's own usage (vault)

    def usage_summary(
        self, since: datetime, until: datetime | None = None, **options: Unpack[calls.UsageSummaryOptions]
    ) -> UsageSummary:
        """Totals, and usage by UTC day, provider and model, over ``[since, until)`` (default: now).

        Options: ``provider`` (one only; "" for all) and ``timeout``.
        """
        return self._run(self._calls.usage_summary(since, until, options))

    def usage_records(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        **options: Unpack[calls.UsageRecordsOptions],
    ) -> UsagePage:
        """One page of the caller's usage records, newest first (pass ``next_page_token`` on).

        Options: ``provider``, ``page_size`` (default 100), ``page_token`` and ``timeout``.
        """
        return self._run(self._calls.usage_records(since, until, options))
