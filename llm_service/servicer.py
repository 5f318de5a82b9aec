"""The LLMService servicer: proto framing around the chat, key and catalog services.

Each method reads the caller's bearer token and deadline, delegates, and frames
the answer; errors are raised as ``rmllm_common.errors`` and become statuses in the
server's error interceptor (no ``try`` ladders here). StreamChat forwards the
shared event stream as deltas and one final ``done``, and closes it (and with it
the upstream HTTP response) and gives back the caller's stream slot whatever way
the call ends; Chat collects the same stream, at most ``max_answer_chars``
characters of it (past that the upstream is closed and the call ends with
UPSTREAM_RESPONSE_TOO_LARGE). A stream that ends without its final event is
never a success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.adapters.base import Finished, TextDelta
from llm_service.auth import bearer_token
from llm_service.catalog import Catalog
from llm_service.chat import ChatService, chat_response, done_message
from llm_service.deadline import Clock, Deadline
from llm_service.keys import KeyTester
from rmllm_common.errors import UpstreamResponseTooLarge, UpstreamStreamTruncated

Context = grpc.aio.ServicerContext[Any, Any]


def _truncated(provider: str) -> UpstreamStreamTruncated:
    return UpstreamStreamTruncated("the provider's stream ended without its final event", provider=provider)


class LLMServicer(llm_pb2_grpc.LLMServiceServicer):
    """Chat, StreamChat, TestKey, ListProviders and ListModels."""

    def __init__(
        self,
        chat: ChatService,
        keys: KeyTester,
        catalog: Catalog,
        clock: Clock,
        *,
        max_answer_chars: int = 2_000_000,
    ) -> None:
        self._chat = chat
        self._keys = keys
        self._catalog = catalog
        self._clock = clock
        self._max_answer_chars = max_answer_chars

    def _deadline(self, context: Context) -> Deadline:
        return Deadline.after(context.time_remaining(), self._clock)

    async def Chat(self, request: llm_pb2.ChatRequest, context: Context) -> llm_pb2.ChatResponse:
        deadline = self._deadline(context)
        prepared = await self._chat.prepare(request, bearer_token(context), deadline)
        parts: list[str] = []
        size, limit = 0, self._max_answer_chars
        async with aclosing(self._chat.events(prepared, deadline)) as events:
            async for event in events:
                if type(event) is TextDelta:
                    size += len(event.text)
                    if size > limit:  # leaving the block closes the upstream response
                        parts.clear()
                        raise UpstreamResponseTooLarge(
                            f"the answer is longer than this server's limit for Chat ({limit} characters); "
                            "use StreamChat for long answers",
                            provider=prepared.spec.id,
                        )
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    return chat_response(prepared, "".join(parts), event)
        raise _truncated(prepared.spec.id)

    async def StreamChat(
        self, request: llm_pb2.StreamChatRequest, context: Context
    ) -> AsyncIterator[llm_pb2.StreamChatResponse]:
        deadline = self._deadline(context)
        prepared = await self._chat.prepare(request, bearer_token(context), deadline)
        slot = await self._chat.stream_slot(prepared)
        try:
            async with aclosing(self._chat.events(prepared, deadline)) as events:
                async for event in events:
                    if type(event) is TextDelta:
                        if event.text:
                            yield llm_pb2.StreamChatResponse(delta=event.text)
                    elif isinstance(event, Finished):
                        yield done_message(prepared, event)
                        return
            raise _truncated(prepared.spec.id)
        finally:
            await slot.release()

    async def TestKey(self, request: llm_pb2.TestKeyRequest, context: Context) -> llm_pb2.TestKeyResponse:
        return await self._keys.test(request, bearer_token(context), self._deadline(context))

    async def ListProviders(
        self, request: llm_pb2.ListProvidersRequest, context: Context
    ) -> llm_pb2.ListProvidersResponse:
        await self._catalog.authenticate(bearer_token(context), self._deadline(context))
        return self._catalog.providers

    async def ListModels(
        self, request: llm_pb2.ListModelsRequest, context: Context
    ) -> llm_pb2.ListModelsResponse:
        return await self._catalog.list_models(request, bearer_token(context), self._deadline(context))
