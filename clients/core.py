"""What the sync and asyncio clients share, so that each of them is only transport.

``ClientCore`` holds a client's options, its two channels and stubs, and its
``Calls``; it finds the stub method of a ``Call`` and turns a failed RPC into the
typed error of ``clients.errors``. ``ChatStreamCore`` holds a StreamChat's state
(text and reasoning so far, the final result, cancellation) and reads each
response: a delta becomes text, a reasoning delta reasoning (tool-call pieces
are left to the result, which carries the calls assembled), ``done`` becomes
the ``ChatResult``, and a stream that ends without it is
``UpstreamStreamTruncated``. The subclasses in ``clients.sync`` and
``clients.aio`` only move messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2_grpc

from clients.calls import LLM, Call, Calls
from clients.channels import (
    DEFAULT_CHAT_TIMEOUT,
    DEFAULT_LLM_TARGET,
    DEFAULT_TIMEOUT,
    DEFAULT_VAULT_TARGET,
    ClientOptions,
    Tls,
)
from clients.datatypes import ChatResult
from clients.errors import Cancelled, RmllmClientError, UpstreamStreamTruncated, from_grpc_error

ChannelT = TypeVar("ChannelT")


class ClientCore(Generic[ChannelT]):
    """Options, channels, stubs and calls of one client (sync or asyncio)."""

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
        self._calls = Calls(self.options)
        self._llm_channel = self._channel(llm_target)
        self._vault_channel = self._channel(vault_target)
        # Stubs for a sync or an asyncio channel: their methods are found by name (``_start``).
        channels: Any = (self._llm_channel, self._vault_channel)
        self._llm: Any = llm_pb2_grpc.LLMServiceStub(channels[0])
        self._vault: Any = vault_pb2_grpc.VaultServiceStub(channels[1])

    def _channel(self, target: str) -> ChannelT:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = self.options
        return (
            f"{type(self).__name__}(llm_target={options.llm_target!r}, vault_target={options.vault_target!r})"
        )

    def _target(self, call: Call[Any]) -> str:
        return self.options.vault_target if call.vault else self.options.llm_target

    def _start(self, call: Call[Any]) -> Any:
        """Invoke the call's stub method (the transport's reply: a response, awaitable or stream)."""
        method: Callable[..., Any] = getattr(self._vault if call.vault else self._llm, call.method)
        return method(call.request, timeout=call.timeout, metadata=self.options.metadata())

    def _error(self, call: Call[Any], exc: grpc.RpcError) -> RmllmClientError:
        return from_grpc_error(exc, service=call.service, target=self._target(call))


class ChatStreamCore:
    """A StreamChat's state and the reading of its responses; subclasses move the messages."""

    def __init__(self, call: Any, target: str) -> None:
        self._call = call
        self._target = target
        self._pieces: list[str] = []
        self._reasoning: list[str] = []
        self.on_reasoning: Callable[[str], None] | None = None  # called with each reasoning piece
        self._result: ChatResult | None = None
        self._cancelled = False

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._pieces)

    @property
    def reasoning(self) -> str:
        """The reasoning text received so far (with ``Reasoning(include=True)``)."""
        return "".join(self._reasoning)

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` stopped the stream before its end."""
        return self._cancelled

    @property
    def _over(self) -> bool:
        return self._result is not None or self._cancelled

    def _read(self, response: llm_pb2.StreamChatResponse | None) -> str | None:
        """The delta of the next response ("" for a reasoning or tool-call piece, which
        is kept, not iterated); None after the final message (kept as the result).

        ``response`` None means the stream ended without its final message.
        """
        if response is None:
            raise UpstreamStreamTruncated(
                "the stream ended without its final message", service=LLM, target=self._target
            )
        kind = response.WhichOneof("event")
        if kind == "done":
            self._result = ChatResult.from_stream(self.text, response.done)
            return None
        if kind == "reasoning_delta":
            self._reasoning.append(response.reasoning_delta)
            if self.on_reasoning is not None:
                self.on_reasoning(response.reasoning_delta)
            return ""
        if kind != "delta":
            return ""  # a tool-call piece: the calls come assembled in the result
        self._pieces.append(response.delta)
        return response.delta

    def _raise_unless_cancelled(self, exc: grpc.RpcError) -> None:
        """A failed read: the typed error, unless ``cancel()`` caused it (iteration just stops)."""
        if not self._cancelled:
            raise from_grpc_error(exc, service=LLM, target=self._target) from exc

    def _finished(self) -> ChatResult:
        """The result of a stream that has ended; ``Cancelled`` if it was cancelled first."""
        if self._result is None:
            raise Cancelled("the stream was cancelled", service=LLM, target=self._target)
        return self._result

    def cancel(self) -> None:
        """Cancel the RPC (the server sees CANCELLED); iteration stops."""
        if not self._over:
            self._cancelled = True
            self._call.cancel()
