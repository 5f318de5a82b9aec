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

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from clients import calls
from clients.calls import UNSET, Maybe
from clients.channels import (
    DEFAULT_CHAT_TIMEOUT,
    DEFAULT_LLM_TARGET,
    DEFAULT_TIMEOUT,
    DEFAULT_VAULT_TARGET,
    ClientOptions,
    Tls,
    sync_channel,
)
from clients.datatypes import (
    ChatResult,
    Message,
    ModelList,
    ProviderConfig,
    ProviderInfo,
    Reasoning,
    ResponseFormat,
    TestKeyResult,
    Tool,
    ToolChoiceArg,
)
from clients.errors import Cancelled, UpstreamStreamTruncated, from_grpc_error

R = TypeVar("R")

LLM = "LLM service"
VAULT = "vault"


class ChatStream:
    """A running StreamChat: iterate it for ``str`` deltas, then read ``result``.

    ``text`` holds the deltas received so far. ``result`` (a ``ChatResult``) reads
    the rest of the stream if needed. A stream that ends without its final message
    raises ``UpstreamStreamTruncated``; any error status raises its typed error.
    ``cancel()`` (or leaving a ``with`` block early) cancels the RPC: iteration then
    stops, and ``result`` raises ``Cancelled``.
    """

    def __init__(self, call: Any, target: str) -> None:
        self._call = call
        self._target = target
        self._pieces: list[str] = []
        self._reasoning: list[str] = []
        self._result: ChatResult | None = None
        self._cancelled = False

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._pieces)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            if self._result is not None or self._cancelled:
                raise StopIteration
            try:
                response: llm_pb2.StreamChatResponse = next(self._call)
            except StopIteration:
                raise UpstreamStreamTruncated(
                    "the stream ended without its final message", service=LLM, target=self._target
                ) from None
            except grpc.RpcError as exc:
                if self._cancelled:
                    raise StopIteration from None
                raise from_grpc_error(exc, service=LLM, target=self._target) from exc
            kind = response.WhichOneof("event")
            if kind == "done":
                self._result = ChatResult.from_stream(self.text, response.done)
                raise StopIteration
            if kind == "delta":
                self._pieces.append(response.delta)
                return response.delta
            if kind == "reasoning_delta":
                self._reasoning.append(response.reasoning_delta)  # tool-call pieces come whole in result

    @property
    def reasoning(self) -> str:
        """The reasoning text received so far (with ``Reasoning(include=True)``)."""
        return "".join(self._reasoning)

    @property
    def result(self) -> ChatResult:
        """The completion (text, finish reason, usage); reads the rest of the stream first."""
        for _ in self:
            pass
        if self._result is None:
            raise Cancelled("the stream was cancelled", service=LLM, target=self._target)
        return self._result

    def cancel(self) -> None:
        """Cancel the RPC (the server sees CANCELLED); iteration stops."""
        if self._result is None and not self._cancelled:
            self._cancelled = True
            self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Client:
    """Blocking client for both services; see the module docstring for an example."""

    def __init__(
        self,
        token: str,
        *,
        llm_target: str = DEFAULT_LLM_TARGET,
        vault_target: str = DEFAULT_VAULT_TARGET,
        tls: Tls | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        chat_timeout: float = DEFAULT_CHAT_TIMEOUT,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.options = ClientOptions(
            token=token,
            llm_target=llm_target,
            vault_target=vault_target,
            tls=tls,
            timeout=timeout,
            chat_timeout=chat_timeout,
            channel_options=tuple(channel_options),
        )
        self._llm_channel = sync_channel(self.options, llm_target)
        self._vault_channel = sync_channel(self.options, vault_target)
        self._llm = llm_pb2_grpc.LLMServiceStub(self._llm_channel)
        self._vault = vault_pb2_grpc.VaultServiceStub(self._vault_channel)

    def __repr__(self) -> str:
        return f"Client(llm_target={self.options.llm_target!r}, vault_target={self.options.vault_target!r})"

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

    def _call(self, method: Callable[..., R], request: Any, timeout: float | None, *, vault: bool) -> R:
        target = self.options.vault_target if vault else self.options.llm_target
        try:
            return method(
                request,
                timeout=timeout if timeout is not None else self.options.timeout,
                metadata=self.options.metadata(),
            )
        except grpc.RpcError as exc:
            raise from_grpc_error(exc, service=VAULT if vault else LLM, target=target) from exc

    # LLM service

    def chat(
        self,
        provider: str,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        tools: Sequence[Tool | Callable[..., Any]] = (),
        tool_choice: ToolChoiceArg | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: ResponseFormat | None = None,
        reasoning: Reasoning | None = None,
        timeout: float | None = None,
    ) -> ChatResult:
        """One completion. ``prompt`` is a user message or a list of ``Message``."""
        request = calls.chat_request(
            provider,
            prompt,
            model=model,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            top_p=top_p,
            stop=stop,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            reasoning=reasoning,
        )
        response = self._call(self._llm.Chat, request, timeout or self.options.chat_timeout, vault=False)
        return ChatResult.from_proto(response)

    def stream_chat(
        self,
        provider: str,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        tools: Sequence[Tool | Callable[..., Any]] = (),
        tool_choice: ToolChoiceArg | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: ResponseFormat | None = None,
        reasoning: Reasoning | None = None,
        timeout: float | None = None,
    ) -> ChatStream:
        """The completion as a ``ChatStream`` of text deltas, then ``.result``."""
        request = calls.stream_request(
            calls.chat_request(
                provider,
                prompt,
                model=model,
                system=system,
                temperature=temperature,
                max_tokens=max_tokens,
                top_p=top_p,
                stop=stop,
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel_tool_calls,
                response_format=response_format,
                reasoning=reasoning,
            )
        )
        call = self._llm.StreamChat(
            request,
            timeout=timeout or self.options.chat_timeout,
            metadata=self.options.metadata(),
        )
        return ChatStream(call, self.options.llm_target)

    def test_key(
        self,
        provider: str,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | None = None,
    ) -> TestKeyResult:
        """Check ``api_key`` (or, when None, the stored key) against the provider."""
        request = llm_pb2.TestKeyRequest(provider=provider, api_key=api_key or "", base_url=base_url or "")
        return TestKeyResult.from_proto(self._call(self._llm.TestKey, request, timeout, vault=False))

    def providers(self, *, timeout: float | None = None) -> list[ProviderInfo]:
        """The provider registry, ordered by id."""
        response = self._call(self._llm.ListProviders, llm_pb2.ListProvidersRequest(), timeout, vault=False)
        return [ProviderInfo.from_proto(p) for p in response.providers]

    def models(self, provider: str, *, timeout: float | None = None) -> ModelList:
        """The models available to the caller for ``provider``."""
        request = llm_pb2.ListModelsRequest(provider=provider)
        return ModelList.from_proto(self._call(self._llm.ListModels, request, timeout, vault=False))

    # Vault

    def put_config(
        self,
        provider: str,
        api_key: str,
        *,
        base_url: str | None = None,
        default_model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
    ) -> ProviderConfig:
        """Store (create or replace) the key and settings for ``provider``."""
        request = calls.put_request(
            provider,
            api_key,
            base_url=base_url,
            default_model=default_model,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return ProviderConfig.from_proto(
            self._call(self._vault.PutProviderConfig, request, timeout, vault=True).config
        )

    def get_config(self, provider: str, *, timeout: float | None = None) -> ProviderConfig:
        """The stored configuration for ``provider`` (``ConfigNotFound`` when none)."""
        request = vault_pb2.GetProviderConfigRequest(provider=provider)
        return ProviderConfig.from_proto(
            self._call(self._vault.GetProviderConfig, request, timeout, vault=True).config
        )

    def list_configs(self, *, timeout: float | None = None) -> list[ProviderConfig]:
        """All of the caller's configurations, ordered by provider."""
        request = vault_pb2.ListProviderConfigsRequest()
        response = self._call(self._vault.ListProviderConfigs, request, timeout, vault=True)
        return [ProviderConfig.from_proto(c) for c in response.configs]

    def update_config(
        self,
        provider: str,
        *,
        base_url: Maybe[str] = UNSET,
        is_active: Maybe[bool] = UNSET,
        default_model: Maybe[str] = UNSET,
        temperature: Maybe[float | None] = UNSET,
        max_tokens: Maybe[int | None] = UNSET,
        timeout: float | None = None,
    ) -> ProviderConfig:
        """Change only the fields given (``None`` clears temperature/max_tokens); never the key."""
        request = calls.update_request(
            provider,
            base_url=base_url,
            is_active=is_active,
            default_model=default_model,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return ProviderConfig.from_proto(
            self._call(self._vault.UpdateProviderConfig, request, timeout, vault=True).config
        )

    def delete_config(self, provider: str, *, timeout: float | None = None) -> str:
        """Remove the key and configuration; returns the canonical provider id."""
        request = vault_pb2.DeleteProviderConfigRequest(provider=provider)
        return self._call(self._vault.DeleteProviderConfig, request, timeout, vault=True).provider
