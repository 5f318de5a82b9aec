"""The LLMService servicer: proto framing around the chat, key and catalog services.

Each method takes the caller's token (admitted by ``auth.AuthInterceptor``) and
deadline, delegates, and frames the answer, pricing a completion's usage from the
registry (cache reads and writes at their own prices). Errors are raised as
``rmllm_common.errors`` and become statuses in the server's error interceptor (no
``try`` ladders here). StreamChat forwards the shared event stream as text,
reasoning and tool-call deltas, in the order they came (the deltas of one
network read joined into one message, see ``coalescing``), and one final ``done``
(carrying the assembled tool calls), and closes it (and with it the upstream HTTP
response) and gives back the caller's stream slot whatever way the call ends;
Chat collects the same stream, at most ``max_answer_chars`` characters of its
text (past that the upstream is closed and the call ends with
UPSTREAM_RESPONSE_TOO_LARGE). A stream that ends without its final event is
never a success. Every Chat, StreamChat, TestKey and live
ListModels call is accounted: one usage record per call, whatever its outcome
(``accounting.recorded``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from llm_service import accounting, telemetry
from llm_service.accounting import note_first_token, recorded
from llm_service.adapters import readends
from llm_service.adapters.base import ChatParams, Finished, TextDelta, ToolCallDelta
from llm_service.auth import current_token
from llm_service.catalog import Catalog
from llm_service.chat import ChatService
from llm_service.coalescing import StreamFrames
from llm_service.deadline import Clock, Deadline
from llm_service.keys import KeyTester
from llm_service.usage import UsageReporter
from rmllm_common.errors import UpstreamResponseTooLarge, UpstreamStreamTruncated
from rmllm_common.registry import ProviderSpec

Context = grpc.aio.ServicerContext[Any, Any]


def usage_of(spec: ProviderSpec, params: ChatParams, finished: Finished) -> llm_pb2.Usage:
    """Token counts and their price (by the answering model, else the requested one),
    cache reads and writes at the registry's cache prices; ``usage_reported`` false
    when the provider sent no usage."""
    result = llm_pb2.Usage()
    fill_usage(result, spec, params, finished)
    return result


def fill_usage(result: llm_pb2.Usage, spec: ProviderSpec, params: ChatParams, finished: Finished) -> None:
    """``usage_of`` written into ``result`` (the answer's own field: no copy), and noted."""
    usage = finished.usage
    priced = spec.model(finished.model) or spec.model(params.model)
    result.input_tokens = usage.input_tokens
    result.output_tokens = usage.output_tokens
    result.total_tokens = usage.total_tokens or usage.input_tokens + usage.output_tokens
    if priced is not None:
        result.cost_usd = priced.cost(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
        )
    result.cache_read_input_tokens = usage.cache_read_input_tokens
    result.cache_creation_input_tokens = usage.cache_creation_input_tokens
    result.reasoning_tokens = usage.reasoning_tokens
    result.usage_reported = usage.reported
    accounting.note_usage(result, finished.model, usage.reported)
    telemetry.note_answer(finished, result)


def tool_calls_of(finished: Finished) -> list[llm_pb2.ToolCall]:
    """The answer's assembled tool calls, in index order."""
    return [llm_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in finished.tool_calls]


def done_message(spec: ProviderSpec, params: ChatParams, finished: Finished) -> llm_pb2.StreamChatResponse:
    """StreamChat's last message."""
    message = llm_pb2.StreamChatResponse()
    done = message.done
    done.finish_reason = finished.finish_reason.value  # type: ignore[assignment]
    fill_usage(done.usage, spec, params, finished)
    done.model = finished.model or params.model
    done.provider = spec.id
    done.response_id = finished.response_id
    if finished.tool_calls:
        done.tool_calls.extend(tool_calls_of(finished))
    done.reasoning = finished.reasoning
    done.provider_state = finished.provider_state
    return message


def chat_response(
    spec: ProviderSpec, params: ChatParams, content: str, finished: Finished
) -> llm_pb2.ChatResponse:
    """Chat's answer."""
    response = llm_pb2.ChatResponse(
        content=content,
        finish_reason=finished.finish_reason.value,  # type: ignore[arg-type]
        model=finished.model or params.model,
        provider=spec.id,
        response_id=finished.response_id,
        reasoning=finished.reasoning,
        provider_state=finished.provider_state,
    )
    fill_usage(response.usage, spec, params, finished)
    if finished.tool_calls:
        response.tool_calls.extend(tool_calls_of(finished))
    return response


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
        usage: UsageReporter | None = None,
        *,
        max_answer_chars: int = 2_000_000,
    ) -> None:
        self._usage = usage
        self._chat = chat
        self._keys = keys
        self._catalog = catalog
        self._clock = clock
        self._max_answer_chars = max_answer_chars

    def _deadline(self, context: Context) -> Deadline:
        return Deadline.after(context.time_remaining(), self._clock)

    async def Chat(self, request: llm_pb2.ChatRequest, context: Context) -> llm_pb2.ChatResponse:
        deadline = self._deadline(context)
        with recorded(self._usage, "Chat", False, deadline) as call:
            prepared = await self._chat.prepare(request, current_token(), deadline)
            parts: list[str] = []
            size, limit = 0, self._max_answer_chars
            events = self._chat.events(prepared, deadline)
            try:
                async for event in events:
                    if type(event) is TextDelta:
                        if call.first_token is None:
                            note_first_token()
                        size += len(event.text)
                        if size > limit:  # leaving the block closes the upstream response
                            parts.clear()
                            raise UpstreamResponseTooLarge(
                                f"the answer is longer than this server's limit for Chat ({limit} "
                                "characters); use StreamChat for long answers",
                                provider=prepared.spec.id,
                            )
                        parts.append(event.text)
                    elif type(event) is Finished:
                        return chat_response(prepared.spec, prepared.params, "".join(parts), event)
            finally:
                await events.aclose()
            raise _truncated(prepared.spec.id)

    async def StreamChat(
        self, request: llm_pb2.StreamChatRequest, context: Context
    ) -> AsyncIterator[llm_pb2.StreamChatResponse]:
        deadline = self._deadline(context)
        with recorded(self._usage, "StreamChat", True, deadline) as call:
            prepared = await self._chat.prepare(request, current_token(), deadline, stream=True)
            try:
                frames = StreamFrames(readends.attach())
                async with aclosing(self._chat.events(prepared, deadline)) as events:
                    try:
                        async for event in events:
                            if isinstance(event, Finished):
                                sent = frames.flush()
                                if sent is not None:
                                    yield sent
                                yield done_message(prepared.spec, prepared.params, event)
                                return
                            if not isinstance(event, ToolCallDelta) and not event.text:  # a read's end
                                sent = frames.flush()
                                if sent is not None:
                                    yield sent
                                continue
                            if call.first_token is None:
                                note_first_token()
                            sent = frames.push(event)
                            if sent is not None:
                                yield sent
                            if not frames.holding:
                                sent = frames.flush()
                                if sent is not None:
                                    yield sent
                    except Exception:
                        sent = frames.flush()  # what came before the failure still reaches the caller
                        if sent is not None:
                            yield sent
                        raise
                raise _truncated(prepared.spec.id)
            finally:
                await prepared.slot.release()

    async def TestKey(self, request: llm_pb2.TestKeyRequest, context: Context) -> llm_pb2.TestKeyResponse:
        deadline = self._deadline(context)
        with recorded(self._usage, "TestKey", False, deadline):
            return await self._keys.test(request, current_token(), deadline)

    async def ListProviders(
        self, request: llm_pb2.ListProvidersRequest, context: Context
    ) -> llm_pb2.ListProvidersResponse:
        return await self._catalog.providers_for(current_token(), self._deadline(context))

    async def ListModels(
        self, request: llm_pb2.ListModelsRequest, context: Context
    ) -> llm_pb2.ListModelsResponse:
        deadline = self._deadline(context)
        with recorded(self._usage, "ListModels", False, deadline, needs_provider_call=True):
            return await self._catalog.list_models(request, current_token(), deadline)
